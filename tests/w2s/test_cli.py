"""The command line never drops what the user typed, and never shows a traceback for a user's mistake."""

import pytest

from w2s.cli import main


def test_a_word_that_is_not_key_value_is_refused(capsys):
    assert main(["cache", "cache.rows_per_shard:4"]) == 2
    assert "unexpected argument 'cache.rows_per_shard:4'" in capsys.readouterr().err
    assert main(["train", "gamma:0.5"]) == 2
    assert "unexpected argument" in capsys.readouterr().err


def test_force_is_refused_where_it_would_do_nothing(capsys):
    for command in ("cache", "train", "eval"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--force"])
        assert exit_.value.code == 2
    assert "unrecognized arguments: --force" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["world", f"world.out_dir={blocker / 'world'}", "world.num_train=300"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err and "Traceback" not in err

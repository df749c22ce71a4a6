"""Cases from a fresh hostile sweep (91 cases, run as a careless user would): each exited 0 with a wrong result
or showed a traceback before it was fixed."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.hostile.test_folders import cache_words, generate_words, train_words
from w2s.cli import main

pytestmark = pytest.mark.integration


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    (tmp_path / "x.yaml").write_bytes(bytes(range(256)))
    assert main(["cache", "--config", str(tmp_path / "x.yaml")]) == 2
    assert "x.yaml" in one_line(capsys)


@pytest.mark.parametrize("bad", [float("nan"), True, {"a": 1}, ""])
def test_an_id_that_is_not_text_or_an_integer_is_refused(bad, micro_world, tmp_path, capsys):
    rows = [json.loads(line) for line in (micro_world / "data" / "cache.jsonl").read_text().splitlines()[:3]]
    rows[1]["example_id"] = bad
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    words = [*cache_words(micro_world, tmp_path / "c"), f"cache.data.path={tmp_path / 'rows.jsonl'}"]
    assert main(["cache", *words]) == 2
    line = one_line(capsys)
    assert "row 1" in line and "example_id" in line and not (tmp_path / "c").exists()


def test_a_weak_pair_that_is_one_model_is_refused(micro_world, tmp_path, capsys):
    words = [*cache_words(micro_world, tmp_path / "c"), f"cache.weak_aligned={micro_world}/weak_base"]
    assert main(["cache", *words]) == 2
    assert "same weights" in one_line(capsys)


def test_a_row_longer_than_a_models_positions_is_refused(micro_world, tmp_path, capsys):
    row = json.loads((micro_world / "data" / "cache.jsonl").read_text().splitlines()[0])
    row["response"] = " ".join([row["response"]] * 40)
    (tmp_path / "long.jsonl").write_text(json.dumps(row) + "\n")
    words = [*cache_words(micro_world, tmp_path / "c"), f"cache.data.path={tmp_path / 'long.jsonl'}", "max_len=5000"]
    assert main(["cache", *words]) == 2
    assert "positions" in one_line(capsys)


def test_a_shard_file_the_manifest_does_not_list_fails_verify(micro_world, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["cache", *cache_words(micro_world, out)]) == 0
    shutil.copy(out / "parquet" / "shard-00000.parquet", out / "parquet" / "shard-00009.parquet")
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert "shard-00009.parquet: not in the manifest" in capsys.readouterr().err


def test_a_bad_checkpoint_position_is_one_line(micro_world, tmp_path, capsys):
    cache = tmp_path / "c"
    assert main(["cache", *cache_words(micro_world, cache)]) == 0
    out = tmp_path / "t"
    assert main(["train", *train_words(micro_world, cache, out), "train.save_every=1"]) == 0
    shutil.rmtree(out / "final")
    (out / "checkpoints" / "step-2" / "w2s_state.json").write_text('{"step": "x"}')
    assert main(["train", *train_words(micro_world, cache, out), "train.save_every=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # a note that final/ is missing, then the refusal
    assert "w2s_state.json: not a w2s checkpoint position" in err[-1] and "Traceback" not in "".join(err)


def test_a_blank_prompt_is_refused_and_a_larger_limit_is_not_already_done(micro_world, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"example_id": "a", "prompt": "   "}) + "\n")
    assert main(["generate", *generate_words(micro_world, tmp_path / "g0"), f"generate.prompts={prompts}"]) == 2
    assert "must be a non-empty string" in one_line(capsys)
    out = tmp_path / "g"
    assert main(["generate", *generate_words(micro_world, out)]) == 0
    assert main(["generate", *generate_words(micro_world, out), "limit=3"]) == 0
    assert len((out / "responses.jsonl").read_text().splitlines()) == 3


def test_an_eval_task_file_that_is_not_the_worlds_is_one_line(micro_world, tmp_path, capsys):
    from tests.hostile.test_folders import eval_words

    (tmp_path / "t.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    assert main(["eval", *eval_words(micro_world, tmp_path / "e"), f"eval.task.path={tmp_path / 't.jsonl'}"]) == 2
    assert "line 1" in one_line(capsys)


def test_gammas_that_share_a_folder_and_an_empty_out_dir_are_refused(micro_world, tmp_path, capsys):
    assert main(["train", "train.gammas=[0.1,0.1000000001]"]) == 2
    assert "train.gammas" in one_line(capsys)
    assert main(["cache", *cache_words(micro_world, tmp_path / "c"), "cache.out_dir="]) == 2
    assert "cache.out_dir: is empty" in one_line(capsys)


def test_a_prompt_and_budget_past_the_models_positions_are_refused(micro_world, tmp_path, capsys):
    words = [*generate_words(micro_world, tmp_path / "g"), "max_new_tokens=1000000"]
    assert main(["generate", *words]) == 2
    line = one_line(capsys)
    assert "prompt 0 (0-based)" in line and "positions" in line and "max_new_tokens" in line
    assert not (tmp_path / "g" / "responses.jsonl").exists()


def test_a_rerun_that_scores_nothing_keeps_the_config_that_made_the_cache(micro_world, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["cache", *cache_words(micro_world, out), "cache.batch_tokens=256"]) == 0
    assert main(["cache", *cache_words(micro_world, out), "cache.batch_tokens=512"]) == 0
    assert "(0 scored now)" in capsys.readouterr().out
    assert "batch_tokens: 256" in (out / "config.yaml").read_text()


def test_a_worker_says_it_wrote_a_part_and_that_the_parts_need_merging(micro_world, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["cache", *cache_words(micro_world, out), "cache.num_shards=2", "cache.shard_index=0"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"part 0 of 2 written to {out}" in printed and f"`w2s cache merge {out}`" in printed


@pytest.mark.parametrize("explicit_first", [True, False])
def test_an_id_made_from_a_rows_position_that_clashes_is_blamed_on_the_row_without_one(
    explicit_first, micro_world, tmp_path, capsys
):
    rows = [json.loads(line) for line in (micro_world / "data" / "cache.jsonl").read_text().splitlines()[:2]]
    for row in rows:
        row.pop("example_id", None)
    named, unnamed = (0, 1) if explicit_first else (1, 0)
    rows[named]["example_id"] = f"row-{unnamed}"  # the id the row without one is given
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    words = [*cache_words(micro_world, tmp_path / "c"), f"cache.data.path={tmp_path / 'rows.jsonl'}"]
    assert main(["cache", *words]) == 2
    whose = "this row has" if explicit_first else "row 0 has"
    assert f"row 1: duplicate example_id 'row-{unnamed}' (first at row 0): {whose} no 'example_id'" in one_line(capsys)

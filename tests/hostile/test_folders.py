"""A folder w2s did not make is never touched, and one folder has one writer (`w2s.runs`).

Every writing command is pointed at a folder holding files of the user's: it must refuse in one line (exit 2)
and leave every byte of them as it was. Then each command is run while another writer holds its folder, and a
fresh start must not report an earlier attempt's metrics as its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from w2s.cli import main
from w2s.runs import LOCK, MARKER, FolderRefused, claim, lock_folder

pytestmark = pytest.mark.integration


def user_folder(path: Path) -> Path:
    """A folder of the user's: notes at the top and a final/README.md, as in the reported loss."""
    (path / "final").mkdir(parents=True)
    (path / "notes.txt").write_text("my experiment notes, not w2s's\n")
    (path / "final" / "README.md").write_text("# my model card\n")
    return path


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of every file under `path`, by relative name."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


def world_words(world: Path) -> list[str]:
    return [f"world.out_dir={world}"]


def cache_words(world: Path, out: Path) -> list[str]:
    return [
        f"cache.out_dir={out}",
        f"cache.data.path={world}/data/cache.jsonl",
        f"cache.weak_base={world}/weak_base",
        f"cache.weak_aligned={world}/weak_aligned",
        f"cache.strong_ref={world}/strong_base",
        "cache.rows_per_shard=20",
        "cache.format=parquet",
    ]


def train_words(world: Path, cache: Path, out: Path) -> list[str]:
    return [
        f"train.cache_dir={cache}",
        f"train.policy={world}/strong_base",
        f"train.out_dir={out}",
        "train.max_steps=2",
        "train.micro_batch_size=4",
    ]


def generate_words(world: Path, out: Path) -> list[str]:
    keys = {"prompts": f"{world}/data/test.jsonl", "model": f"{world}/strong_base", "tokenizer": f"{world}/tokenizer"}
    keys.update(weak_base=f"{world}/weak_base", weak_aligned=f"{world}/weak_aligned")
    return [f"generate.{k}={v}" for k, v in keys.items()] + [f"generate.out_dir={out}", "limit=2", "max_new_tokens=6"]


def eval_words(world: Path, out: Path) -> list[str]:
    systems = [{"name": "strong_base", "model": f"{world}/strong_base"}]
    return [
        f"eval.task.path={world}/data/test.jsonl",
        f"eval.weak_base={world}/weak_base",
        f"eval.weak_aligned={world}/weak_aligned",
        f"eval.tokenizer={world}/tokenizer",
        f"eval.out_dir={out}",
        f"eval.systems={json.dumps(systems)}",
        "eval.gamma_sweep=false",
        "eval.num_examples=2",
        "eval.max_new_tokens=6",
    ]


@pytest.fixture(scope="module")
def cache(micro_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "cache"
    assert main(["cache", *cache_words(micro_world, out)]) == 0
    return out


@pytest.fixture(scope="module")
def xsum(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("xsum") / "xsum.jsonl"
    data.write_text("".join(json.dumps({"document": f"doc {i}", "summary": f"sum {i}"}) + "\n" for i in range(3)))
    return data


def commands(world: Path, cache: Path, xsum: Path) -> dict[str, callable]:
    """Every writing command, as a function of the output folder it is pointed at; each returns an exit status."""
    from w2s.science.tiny import main as science
    from w2s.world.real import main as real_world

    return {
        "world": lambda out: main(["world", *world_words(out)]),
        "cache": lambda out: main(["cache", *cache_words(world, out)]),
        "merge": lambda out: main(["cache", "merge", str(out)]),
        "train": lambda out: main(["train", *train_words(world, cache, out)]),
        "generate": lambda out: main(["generate", *generate_words(world, out)]),
        "search": lambda out: main(["search", *generate_words(world, out)]),
        "eval": lambda out: main(["eval", *eval_words(world, out)]),
        "export": lambda out: main(["export", f"export.data.path={xsum}", f"export.out={out}/xsum.jsonl"]),
        "science": lambda out: science(["configs/science.yaml", f"out_dir={out}"]),
        "real world": lambda out: real_world(["--out", str(out)]),
    }


NAMES = ["world", "cache", "merge", "train", "generate", "search", "eval", "export", "science", "real world"]


@pytest.mark.parametrize("name", NAMES)
def test_a_folder_of_the_users_is_refused_and_left_byte_identical(name, micro_world, cache, xsum, tmp_path, capsys):
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    assert commands(micro_world, cache, xsum)[name](folder) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and "not made by" in err[0], err
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == ["final", "notes.txt"]


@pytest.mark.parametrize("name", ["cache", "train", "generate", "eval"])
def test_an_output_inside_an_input_is_refused_before_anything_is_written(name, micro_world, cache, xsum, capsys):
    inside = {
        "cache": micro_world / "weak_base" / "out",
        "train": cache / "out",
        "generate": micro_world / "strong_base" / "o",
    }
    inside["eval"] = micro_world / "strong_base" / "report"
    out = inside[name]
    assert commands(micro_world, cache, xsum)[name](out) == 2
    assert "input" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("name", ["world", "cache", "train", "generate", "eval", "export"])
def test_a_second_writer_is_refused_while_the_first_holds_the_folder(name, micro_world, cache, xsum, tmp_path, capsys):
    out = tmp_path / "busy"
    run = commands(micro_world, cache, xsum)[name]
    if name == "world":  # a world build is a minute: hold an empty world folder instead of building one first
        claim(out, "world", identity="another config").release()
    else:
        assert run(out) == 0
    capsys.readouterr()
    before = snapshot(out)
    names = {"cache": f"{LOCK}-00000-of-00001"}
    holder = lock_folder(out, names.get(name, LOCK))
    try:
        assert run(out) == 2
        assert "another w2s process" in capsys.readouterr().err
    finally:
        holder.close()
    assert snapshot(out) == before


TRAIN_TWICE = """
import sys
from w2s.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a process killed and rerun: tens of seconds; in `make test`, not `make test-fast`
def test_two_trainings_started_together_into_one_folder_leave_one_run(micro_world, cache, tmp_path):
    """Two `w2s train` with different learning rates, started at once: one refuses, the other's run is whole."""
    out = tmp_path / "together"
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")  # set by in-process runs before
    env = {k: v for k, v in os.environ.items() if k not in launcher} | {"PYTHONPATH": os.getcwd(), "TQDM_DISABLE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN_TWICE, "train", *train_words(micro_world, cache, out), f"train.lr={lr}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for lr in (1e-4, 1e-3)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another w2s process" in refused or "holds another run of `w2s train`" in refused
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]  # one run's steps, not two interleaved
    marker = json.loads((out / MARKER).read_text())
    assert marker["state"] == "done" and "final/model.safetensors" in marker["published"]


def test_a_fresh_start_reports_nothing_of_a_killed_attempt(micro_world, cache, tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(["train", *train_words(micro_world, cache, out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    marker["state"] = "running"  # as a run killed before its first checkpoint leaves it, with 45 steps logged
    (out / MARKER).write_text(json.dumps(marker))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(1, 46)))
    (out / "done.json").unlink()
    assert main(["train", *train_words(micro_world, cache, out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and all(row["loss"] != 9.0 for row in rows)
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


@pytest.mark.parametrize("name", ["train", "generate", "eval"])
def test_already_done_is_checked_not_assumed(name, micro_world, cache, xsum, tmp_path, capsys):
    """A published file changed after the run finished is never reported as done: the rerun redoes it."""
    out = tmp_path / "done"
    run = commands(micro_world, cache, xsum)[name]
    assert run(out) == 0
    published = json.loads((out / MARKER).read_text())["published"]
    victim = out / sorted(name for name in published if name.endswith((".json", ".jsonl")))[0]
    victim.write_text("{}\n")
    assert run(out) == 0
    capsys.readouterr()
    assert victim.read_text() != "{}\n"
    assert json.loads((out / MARKER).read_text())["state"] == "done"


def test_force_removes_only_what_w2s_wrote(tmp_path):
    folder = claim(tmp_path / "w", "world", identity="a", artefacts=("world.json",))
    (tmp_path / "w" / "world.json").write_text("{}")
    folder.finish(["world.json"])
    folder.release()
    (tmp_path / "w" / "notes.txt").write_text("the user's, added later")
    claim(tmp_path / "w", "world", identity="a", force=True, artefacts=("world.json",)).release()
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [".w2s-lock", MARKER, "notes.txt"]


def test_a_link_put_into_a_w2s_folder_is_refused_and_its_target_left_alone(tmp_path):
    """A shard folder replaced by a link to the user's own folder is never written, reset or removed through."""
    folder = claim(tmp_path / "cache", "cache", identity="a", artefacts=("parquet",))
    folder.release()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.parquet").write_bytes(b"the user's")
    (tmp_path / "cache" / "parquet").symlink_to(user)
    for on_change, identity in (("refuse", "a"), ("replace", "b")):
        with pytest.raises(FolderRefused, match="parquet: a link w2s did not make"):
            claim(tmp_path / "cache", "cache", identity=identity, on_change=on_change, artefacts=("parquet",))
    assert (user / "thesis.parquet").read_bytes() == b"the user's"

"""A cache run either does what was asked or refuses in one line; nothing wrong is ever published silently."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.cache.helpers import build, cache_config
from w2s.cache.run import run
from w2s.cache.store import verify_cache
from w2s.cli import main
from w2s.errors import UserError

pytestmark = pytest.mark.integration


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(example_id, response):
    return {"example_id": example_id, "prompt": "summarize : mira sold 7 lamps in oslo .", "response": response}


def test_a_dataset_edited_in_place_is_read_afresh(micro_world, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [row("a", "mira sold 7 lamps ."), row("b", "in oslo .")])
    first = build(micro_world, tmp_path / "first", data=str(data), format="parquet")
    before = os.stat(data)
    write_jsonl(data, [row("c", "anna sold 9 bowls ."), row("d", "in rome .")])  # same size, other rows
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(data).st_size == before.st_size and os.stat(data).st_mtime_ns == before.st_mtime_ns
    second = build(micro_world, tmp_path / "second", data=str(data), format="parquet")
    table = pq.read_table(tmp_path / "second" / "parquet" / "shard-00000.parquet")
    assert sorted(table["example_id"].to_pylist()) == ["c", "d"]
    assert second["provenance"]["dataset"]["fingerprint"] == f"sha256:{hashlib.sha256(data.read_bytes()).hexdigest()}"
    assert second["provenance"]["dataset"]["fingerprint"] != first["provenance"]["dataset"]["fingerprint"]


@pytest.fixture(scope="module")
def finished(micro_world, tmp_path_factory):
    """A finished cache of 5 shards in both formats, never modified: tests damage copies of it."""
    out = tmp_path_factory.mktemp("trust") / "cache"
    build(micro_world, out)
    return out


def store_hashes(cache_dir):
    """sha256 of every file in the shard folders, and the manifest (but for the folder it names as out_dir)."""
    files = [p for p in cache_dir.rglob("*") if p.is_file() and p.parent != cache_dir]
    hashes = {str(p.relative_to(cache_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    del manifest["config"]["out_dir"]
    return hashes, manifest


@pytest.mark.parametrize(
    ("damage", "broken"),
    [
        (lambda c: (c / "parquet" / "shard-00002.parquet").unlink(), 2),
        (lambda c: shutil.rmtree(c / "zarr" / "shard-00003.zarr"), 3),
        (lambda c: (c / "zarr" / "shard-00001.zarr" / "weak_log_ratio" / "c" / "0").write_bytes(b"\0" * 40), 1),
        (
            lambda c: (c / "parquet" / "shard-00004.parquet").write_bytes(
                (c / "parquet" / "shard-00000.parquet").read_bytes()
            ),
            4,
        ),
    ],
    ids=["parquet-deleted", "zarr-deleted", "zarr-corrupt", "parquet-swapped"],
)
def test_a_rerun_on_a_damaged_finished_cache_redoes_the_damaged_shard(
    micro_world, finished, tmp_path, capsys, damage, broken
):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    damage(copy)
    body = run(cache_config(micro_world, copy))
    assert body["redone"] == [broken] and body["scored_now"] == 1
    assert f"1 missing or corrupt, redone: shard {broken}" in capsys.readouterr().out
    assert store_hashes(copy) == store_hashes(finished)
    assert verify_cache(copy) == []
    assert not list(copy.glob("ledger-*"))


def test_a_rerun_on_a_sound_finished_cache_checks_it_and_writes_nothing(micro_world, finished, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    manifest_time = (copy / "manifest.json").stat().st_mtime_ns
    body = run(cache_config(micro_world, copy))
    assert body["redone"] == [] and body["scored_now"] == 0 and body["checked"] == 5
    assert "checked the finished cache: 5 shards, 0 missing or corrupt" in capsys.readouterr().out
    assert (copy / "manifest.json").stat().st_mtime_ns == manifest_time


def test_inspect_verifies_the_checksums_first(finished, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    assert main(["inspect", str(copy)]) == 0
    assert "verified: 10 shard files match their sizes, checksums and row ids" in capsys.readouterr().out
    victim = copy / "zarr" / "shard-00002.zarr" / "weak_log_ratio" / "c" / "0"  # inspect reads parquet, not this
    victim.write_bytes(victim.read_bytes()[:-1])
    assert main(["inspect", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard-00002.zarr" in err and "verif" in err


HOLDER = """
import os, sys
from pathlib import Path
from w2s.cache.ledger import worker_lock_name
from w2s.runs import lock_folder
handle = lock_folder(Path(sys.argv[1]), worker_lock_name(0, 1))
print(os.getpid(), flush=True)
sys.stdin.read()
"""


def test_a_second_build_into_the_same_folder_is_refused_and_kill_9_frees_it(micro_world, finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "parquet" / "shard-00001.parquet").unlink()  # work for the rerun to do
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(copy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        pid = holder.stdout.readline().strip()
        assert pid.isdigit()
        with pytest.raises(UserError, match=rf"{copy}: another w2s process \(pid {pid}\) is writing here"):
            build(micro_world, copy)
        assert not (copy / "parquet" / "shard-00001.parquet").exists()
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process
        holder.wait()
    body = build(micro_world, copy)
    assert body["redone"] == [1]
    assert store_hashes(copy) == store_hashes(finished)


@pytest.mark.parametrize("fault", ["missing", "broken-config"])
def test_a_bad_model_folder_is_refused_in_one_line_and_nothing_is_written(micro_world, tmp_path, capsys, fault):
    model = tmp_path / "aligned"
    if fault == "broken-config":
        shutil.copytree(micro_world / "weak_aligned", model)
        (model / "config.json").write_text('{"model_type": "llama", ')
    out = tmp_path / "out"
    code = main(
        [
            "cache",
            f"out_dir={out}",
            f"data.path={micro_world / 'data' / 'cache.jsonl'}",
            f"weak_base={micro_world / 'weak_base'}",
            f"weak_aligned={model}",
            "strong_ref=",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "weak_aligned" in err and str(model) in err
    assert not out.exists()

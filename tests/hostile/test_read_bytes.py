"""Every byte trained on is checked as it is read: a shard damaged on disk (one flipped byte, its size and
modification time put back, so that the cheap start-up check passes) stops training before the batch that would
use it reaches an optimiser step, whatever `train.verify_cache` says; and a manifest that disagrees with itself is
refused by `w2s verify` and by training, naming the manifest and the field."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cache.helpers import build
from tests.train.test_recipe import train_config
from w2s.cache.store import Cache
from w2s.cli import main
from w2s.errors import CacheMismatch
from w2s.train.metrics import read_metrics
from w2s.train.reader import epoch_order
from w2s.train.recipe import run

pytestmark = pytest.mark.integration

MICRO, ACCUM, SEED, BLOCK = 4, 2, 0, 4
"""Reader settings of the runs below (those of `train_config`, and the default block_shards)."""


@pytest.fixture(scope="module")
def built(micro_world, tmp_path_factory):
    """A micro-world cache in both formats (40 rows, shards of 8): copied by each test before it is damaged."""
    out = tmp_path_factory.mktemp("hostile") / "cache"
    build(micro_world, out, format="both")
    return out


def flip_one_byte(path: Path) -> None:
    """Flips one byte in the middle of `path` (a file, or the largest file of a folder), putting back its mtime."""
    victim = max((f for f in path.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size) if path.is_dir() else path
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def last_loaded(cache: Cache) -> tuple[int, int]:
    """The shard the reader loads last in epoch 0 (never the first it loads) and the epoch position of its first row."""
    order = epoch_order([s["rows"] for s in cache.shards], SEED, 0, BLOCK)
    first_seen: dict[int, int] = {}
    for position, (shard, _) in enumerate(order.tolist()):
        first_seen.setdefault(shard, position)
    victim = max(first_seen, key=first_seen.get)
    return victim, first_seen[victim]


def train_words(world: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        f"train.cache_dir={cache}",
        f"train.policy={world / 'strong_base'}",
        f"train.out_dir={out}",
        f"train.micro_batch_size={MICRO}",
        f"train.grad_accum={ACCUM}",
        f"train.seed={SEED}",
        "train.verify_cache=sizes",  # the cheapest start-up check: it cannot see this damage
        *extra,
    ]


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_a_damaged_shard_stops_training_before_its_batch_is_stepped(micro_world, built, tmp_path, fmt, capsys):
    cache_dir = tmp_path / "cache"
    shutil.copytree(built, cache_dir)  # copy2: every file keeps its mtime, older than the manifest's
    cache = Cache.open(cache_dir)
    victim, first_row = last_loaded(cache)
    steps = cache.totals["rows"] // (MICRO * ACCUM)
    assert 0 < first_row // (MICRO * ACCUM) < steps  # some steps run on sound shards before the victim is read
    flip_one_byte(cache_dir / cache.shards[victim]["files"][fmt]["name"])
    assert Cache.open(cache_dir).verify("sizes") == []  # start-up passes: only reading the bytes finds the damage

    out = tmp_path / "run"
    words = train_words(micro_world, cache_dir, out, f"train.cache_format={fmt}", f"train.max_steps={steps}")
    assert main(words) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    name = cache.shards[victim]["files"][fmt]["name"]
    assert f"{cache_dir / name}: sha256 differs from the manifest; run `w2s verify {cache_dir}`" in line
    assert "rebuild the cache with `w2s cache` (damaged shards are redone)" in line
    assert not (out / "final").exists()
    assert len(read_metrics(out)) == first_row // (MICRO * ACCUM) < steps  # no step took a row of the victim


@pytest.fixture
def inconsistent(built, tmp_path):
    """A copy of the cache whose manifest's totals no longer sum its shards (shard files untouched)."""
    cache_dir = tmp_path / "cache"
    shutil.copytree(built, cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["totals"]["response_tokens"] += 1
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    return cache_dir


def test_an_inconsistent_manifest_is_refused_by_verify_and_by_training(micro_world, inconsistent, tmp_path, capsys):
    expected = f"{inconsistent / 'manifest.json'}: totals.response_tokens is "
    assert main(["verify", str(inconsistent)]) == 1
    (fail,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAIL")]
    assert fail.startswith(f"FAIL {expected}") and "but its shards sum to" in fail
    with pytest.raises(CacheMismatch, match=r"totals\.response_tokens is \d+, but its shards sum to \d+") as caught:
        run(train_config(micro_world, inconsistent, tmp_path / "run", verify_cache="sizes", max_steps=1))
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["shards"][1].update(index=7), "shards[1].index"),
        (lambda m: m["shards"][2].update(row_start=m["shards"][2]["row_start"] + 1), "shards[2].row_start"),
        (lambda m: m["totals"].update(rows=m["totals"]["rows"] - 8), "totals.rows"),
        (lambda m: m["shards"].pop(), "totals.rows"),  # a shard dropped from the list: totals no longer sum
        (lambda m: m["provenance"]["dataset"].update(rows=39), "provenance.dataset.rows"),
        (lambda m: m["shards"][0]["files"]["zarr"].pop("sha256"), "shards[0].files.zarr"),
    ],
    ids=["index", "row_start", "totals", "dropped_shard", "dataset_rows", "no_sha256"],
)
def test_each_disagreement_of_the_manifest_is_named(built, tmp_path, edit, field):
    cache_dir = tmp_path / "cache"
    shutil.copytree(built, cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    edit(manifest)
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatch) as caught:
        Cache.open(cache_dir)
    assert str(caught.value).startswith(f"{cache_dir / 'manifest.json'}: {field}") and "\n" not in str(caught.value)


def test_the_sound_cache_opens_and_agrees_with_its_dataset(built):
    cache = Cache.open(built)
    assert cache.provenance["dataset"]["rows"] == cache.totals["rows"] == 40 and cache.verify() == []

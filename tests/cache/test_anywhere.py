"""A cache works from any directory: its manifest records absolute paths, and it keeps its own tokenizer, so
`w2s inspect` runs from elsewhere even once the models it was built from are gone."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cache.helpers import build
from w2s.cache.config import CacheConfig
from w2s.cache.portable import absolute_paths
from w2s.models import load_tokenizer
from w2s.provenance import tokenizer_fingerprint
from w2s.source import DataSource


def test_local_paths_become_absolute_and_hub_ids_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "weak").mkdir(parents=True)
    (tmp_path / "rows.jsonl").write_text("")
    config = absolute_paths(
        CacheConfig(
            out_dir="out/cache", data=DataSource("rows.jsonl"), weak_base="models/weak", weak_aligned="org/model-dpo"
        )
    )
    assert config.out_dir == str(tmp_path / "out" / "cache") and config.data.path == str(tmp_path / "rows.jsonl")
    assert config.weak_base == str(tmp_path / "models" / "weak")
    assert config.weak_aligned == "org/model-dpo" and config.strong_ref == ""  # a hub id, and no model at all


@pytest.mark.integration
def test_inspect_works_from_another_directory_after_the_models_moved(micro_world, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    for name in ("weak_base", "weak_aligned"):
        shutil.copytree(micro_world / name, work / "models" / name)
    shutil.copy(micro_world / "data" / "cache.jsonl", work / "rows.jsonl")
    monkeypatch.chdir(work)  # everything below is named relative to `work`
    relative = Path(".")
    build(relative / "models", relative / "cache", data="rows.jsonl")
    manifest = json.loads((work / "cache" / "manifest.json").read_text())
    assert manifest["config"]["out_dir"] == str(work / "cache") and manifest["config"]["data"]["path"] == str(
        work / "rows.jsonl"
    )
    assert manifest["provenance"]["models"]["weak_base"]["name_or_path"] == str(work / "models" / "weak_base")
    assert manifest["provenance"]["dataset"]["source"] == str(work / "rows.jsonl")
    copy = load_tokenizer("cache tokenizer", str(work / "cache" / "tokenizer"))
    assert tokenizer_fingerprint(copy) == manifest["provenance"]["tokenizer_sha256"]

    shutil.rmtree(work / "cache" / "tokenizer")  # a cache made before the copy existed gets one on a rerun
    assert build(relative / "models", relative / "cache", data="rows.jsonl")["scored_now"] == 0
    assert (work / "cache" / "tokenizer" / "tokenizer.json").exists()

    shutil.rmtree(work / "models")  # the models are gone: only the cache's own copy of the tokenizer is left
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "w2s.cli", "inspect", str(work / "cache")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = " ".join(done.stdout.split())  # rich wraps lines at the terminal's width
    assert "most positive tokens" in printed and "40 rows" in printed
    assert (work / "cache" / "inspect.png").stat().st_size > 1000

"""Stage 1 on the micro world: exact values, both stores, shards, merge, resume after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.cache.helpers import build
from w2s.cache.formats import get_format
from w2s.cache.merge import merge_parts
from w2s.cache.store import verify_cache

pytestmark = pytest.mark.integration
read_parquet, read_zarr = get_format("parquet").read, get_format("zarr").read


@pytest.fixture(scope="module")
def cache_dir(micro_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    build(micro_world, out, strong_ref=str(micro_world / "strong_base"))
    return out


def by_hand(model_dir, input_ids, prompt_len):
    """Log-probs of the response tokens from one unbatched forward pass: the independent recompute."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0]  # [seq, vocab]
    logps = torch.log_softmax(logits.double(), dim=-1)
    return np.array([logps[t - 1, input_ids[t]].item() for t in range(prompt_len, len(input_ids))])


def test_cached_values_equal_an_independent_recompute(cache_dir, micro_world):
    table = ds.dataset(str(cache_dir / "parquet"), format="parquet").to_table().sort_by("row_id")
    assert table["row_id"].to_pylist() == list(range(40))
    for row in (0, 17, 39):
        ids, prompt_len = table["input_ids"][row].as_py(), table["prompt_len"][row].as_py()
        base = by_hand(micro_world / "weak_base", ids, prompt_len)
        aligned = by_hand(micro_world / "weak_aligned", ids, prompt_len)
        strong = by_hand(micro_world / "strong_base", ids, prompt_len)
        assert ids[-1] == 0  # the response ends with EOS (id 0 in the world tokenizer) and EOS is scored
        assert table["response_len"][row].as_py() == len(ids) - prompt_len == len(base)
        np.testing.assert_allclose(table["logp_weak_base"][row].as_py(), base, atol=1e-5)
        np.testing.assert_allclose(table["logp_weak_aligned"][row].as_py(), aligned, atol=1e-5)
        np.testing.assert_allclose(table["logp_strong_ref"][row].as_py(), strong, atol=1e-5)
        np.testing.assert_allclose(table["weak_log_ratio"][row].as_py(), aligned - base, atol=1e-5)
        assert table["weak_seq_reward"][row].as_py() == pytest.approx((aligned - base).sum(), abs=1e-4)


def test_parquet_and_zarr_hold_the_same_values(cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    for shard in manifest["shards"]:
        a = read_parquet(cache_dir / shard["files"]["parquet"]["name"])
        b = read_zarr(cache_dir / shard["files"]["zarr"]["name"])
        assert a.example_id == b.example_id
        for name in (
            "row_id",
            "input_ids",
            "input_offsets",
            "prompt_len",
            "response_len",
            "weak_seq_reward",
            "offsets",
        ):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert (
            a.token_values.keys()
            == b.token_values.keys()
            == {"logp_weak_base", "logp_weak_aligned", "weak_log_ratio", "logp_strong_ref"}
        )
        for name in a.token_values:
            np.testing.assert_array_equal(a.token_values[name], b.token_values[name])


def test_manifest_records_provenance_and_shards(cache_dir, micro_world):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    prov = manifest["provenance"]
    world = json.loads((micro_world / "world.json").read_text())
    assert prov["models"]["weak_base"]["weights_sha256"] and prov["models"]["strong_ref"]["name_or_path"].endswith(
        "strong_base"
    )
    assert prov["dataset"]["fingerprint"].startswith("sha256:") and prov["backend"] == "transformers"
    assert "<|assistant|>" in prov["chat_template"] and prov["code_version"].startswith("w2s ")
    assert [s["rows"] for s in manifest["shards"]] == [8, 8, 8, 8, 8]
    assert manifest["totals"]["rows"] == 40 and world["config"]["num_cache"] == 40
    assert verify_cache(cache_dir) == []


def test_float16_storage_rounds_only_at_storage(micro_world, cache_dir, tmp_path):
    build(micro_world, tmp_path / "h", storage_dtype="float16", format="parquet")
    half = ds.dataset(str(tmp_path / "h" / "parquet"), format="parquet").to_table().sort_by("row_id")
    full = ds.dataset(str(cache_dir / "parquet"), format="parquet").to_table().sort_by("row_id")
    assert half.schema.field("weak_log_ratio").type.value_type == pa.float16()
    np.testing.assert_allclose(half["weak_log_ratio"][5].as_py(), full["weak_log_ratio"][5].as_py(), atol=2e-3)
    assert half["weak_seq_reward"].to_pylist() == full["weak_seq_reward"].to_pylist()


def shard_hashes(directory):
    manifest = json.loads((directory / "manifest.json").read_text())
    return [(s["index"], s["rows"], {f: e["sha256"] for f, e in s["files"].items()}) for s in manifest["shards"]]


def test_two_workers_then_merge_equal_one_build(micro_world, cache_dir, tmp_path):
    out = tmp_path / "parts"
    for index in (1, 0):
        build(micro_world, out, strong_ref=str(micro_world / "strong_base"), num_shards=2, shard_index=index)
    assert not (out / "manifest.json").exists()
    merge_parts(out)
    assert shard_hashes(out) == shard_hashes(cache_dir)
    assert verify_cache(out) == []


def test_merge_refuses_a_missing_part(micro_world, tmp_path):
    out = tmp_path / "parts"
    build(micro_world, out, num_shards=3, shard_index=0)
    with pytest.raises(Exception, match=r"parts \[0\] found"):
        merge_parts(out)


KILLABLE = """
import sys
from tests.cache.helpers import build
from pathlib import Path
build(Path(sys.argv[1]), Path(sys.argv[2]), rows_per_shard=2, format=sys.argv[3])
"""


@pytest.mark.slow  # a process killed and rerun: tens of seconds; in `make test`, not `make test-fast`
def test_kill_9_then_resume_gives_the_same_store(micro_world, tmp_path):
    reference = tmp_path / "ref"
    build(micro_world, reference, rows_per_shard=2)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    kills = 0
    for _ in range(3):  # kill -9 once the first shards are down, possibly several times
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(micro_world), str(out), "both"], env=env)
        while proc.poll() is None and not list(out.glob("ledger-*.json")):
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            assert not (out / "manifest.json").exists()
    assert kills >= 1
    subprocess.run([sys.executable, "-c", KILLABLE, str(micro_world), str(out), "both"], env=env, check=True)
    assert shard_hashes(out) == shard_hashes(reference)
    assert not list(out.glob("*/.*tmp*")) and not list(out.glob("ledger-*"))
    assert verify_cache(out) == []


def test_inspect_and_verify_commands(cache_dir, tmp_path, capsys):
    from w2s.cli import main

    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(cache_dir, copy)
    assert main(["inspect", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "40 rows" in out and "most positive tokens" in out
    assert (copy / "inspect.png").stat().st_size > 5000
    assert main(["verify", str(copy)]) == 0
    (copy / "inspect.png").unlink()  # a cache folder w2s may not write (read-only for this user): no PNG anywhere
    real_access = os.access
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "access", lambda path, mode: False if Path(path) == copy else real_access(path, mode))
        assert main(["inspect", str(copy)]) == 0
    assert "histograms: not drawn" in capsys.readouterr().out and not (copy / "inspect.png").exists()
    victim = copy / "zarr" / "shard-00002.zarr" / "weak_log_ratio" / "c" / "0"
    victim.write_bytes(victim.read_bytes()[:-1])
    assert main(["verify", str(copy)]) == 1
    assert "shard-00002.zarr" in capsys.readouterr().err


def test_a_compact_build_holds_what_training_reads_and_inspects(micro_world, cache_dir, tmp_path, capsys):
    from w2s.cli import main
    from w2s.runs import FolderRefused

    out = tmp_path / "compact"
    body = build(
        micro_world, out, strong_ref=str(micro_world / "strong_base"), store="compact", storage_dtype="bfloat16"
    )
    assert body["layout"]["store"] == "compact" and body["provenance"]["store"] == "compact"
    assert verify_cache(out) == []
    table = ds.dataset(str(out / "parquet"), format="parquet").to_table().sort_by("row_id")  # plain pyarrow
    assert table.column_names == ["row_id", "input_ids", "prompt_len", "weak_log_ratio", "logp_strong_ref"]
    full = ds.dataset(str(cache_dir / "parquet"), format="parquet").to_table().sort_by("row_id")
    assert table["input_ids"].to_pylist() == full["input_ids"].to_pylist()
    bits = np.asarray(table["weak_log_ratio"].combine_chunks().values)
    ratios = (bits.astype(np.uint32) << 16).view(np.float32)  # docs/cache.md's decoding of bfloat16
    np.testing.assert_allclose(ratios, full["weak_log_ratio"].combine_chunks().values.to_numpy(), atol=0.02, rtol=2**-8)
    compact_bytes = sum(s["files"]["parquet"]["bytes"] for s in body["shards"])
    full_bytes = sum(
        s["files"]["parquet"]["bytes"] for s in json.loads((cache_dir / "manifest.json").read_text())["shards"]
    )
    assert compact_bytes < full_bytes / 2
    assert (
        build(micro_world, out, strong_ref=str(micro_world / "strong_base"), store="compact", storage_dtype="bfloat16")[
            "scored_now"
        ]
        == 0
    )  # a rerun finds it finished
    with pytest.raises(FolderRefused, match=r"holds another run of `w2s cache` \(storage_dtype, store differ\)"):
        build(micro_world, out, strong_ref=str(micro_world / "strong_base"))  # a full build into it
    assert main(["inspect", str(out)]) == 0
    assert "compact store, stored bfloat16" in capsys.readouterr().out


def test_bytes_per_response_token_bounds(micro_world, tmp_path):
    """Deterministic sizes of one-shard caches of the micro world (its models are barely trained, so their
    log-probs compress less than a real model's; `benchmarks/cache_storage.py` measures the tiny world)."""
    sizes = {}
    for store, dtype, ref in (("full", "float32", False), ("compact", "bfloat16", False), ("compact", "float16", True)):
        strong = str(micro_world / "strong_base") if ref else ""
        body = build(
            micro_world,
            tmp_path / f"{store}-{dtype}",
            rows_per_shard=40,
            store=store,
            storage_dtype=dtype,
            strong_ref=strong,
        )
        tokens = body["totals"]["response_tokens"]
        sizes[store, dtype] = {fmt: body["shards"][0]["files"][fmt]["bytes"] / tokens for fmt in ("parquet", "zarr")}
    bounds = {  # measured, plus 5%: 12.46, 14.50 / 3.76, 4.72 / 5.62, 6.77 (Zarr pays ~1 KB of metadata an array)
        ("full", "float32"): {"parquet": 13.1, "zarr": 15.2},
        ("compact", "bfloat16"): {"parquet": 4.0, "zarr": 5.0},
        ("compact", "float16"): {"parquet": 5.9, "zarr": 7.1},
    }
    for key, per_format in bounds.items():
        for fmt, bound in per_format.items():
            assert sizes[key][fmt] < bound, (key, fmt, sizes[key][fmt])

"""Nothing a user does ends in a traceback: an impossible world, an engine that is not installed, a reference
measured at another precision and a full disk are each refused in one line (exit 2) that says how to fix it,
before any output is written."""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from w2s.cache.config import CacheConfig
from w2s.cli import main
from w2s.config import ConfigError, require_installed
from w2s.errors import CacheMismatch
from w2s.train.guards import check_reference_batch

SMALL_WORLD = [
    "world.num_train=300",
    "world.num_align=300",
    "world.num_cache=8",
    "world.num_test=8",
    "world.num_val=8",
    "world.vocab_size=400",
    "world.weak.steps=1",
    "world.strong.steps=1",
    "world.align_steps=1",
    "world.sft_steps=1",
    "world.eval_examples=1",
]
GPU_EXTRA = "pip install 'w2s[gpu]'"


def refused(capsys, argv: list[str]) -> str:
    """Runs `w2s argv` in this process; asserts exit 2 and a single line on stderr, which it returns."""
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, lines)
    return lines[0]


@pytest.mark.integration
@pytest.mark.parametrize(
    "settings, message",
    [
        (
            ["world.vocab_size=300"],
            r"world.vocab_size: with 300 tokens, example \S+ takes \d+ tokens, more than the 256",
        ),
        (["world.vocab_size=259"], r"raise world.vocab_size"),
        (["world.vocab_size=5"], r"world.vocab_size: must be in \[259, 65536\]"),
        (["world.vocab_size=2000"], r"world.vocab_size: the 300 training examples fill only \d+ tokens, not 2000"),
        (["world.l_min=100", "world.l_max=120"], r"world.l_min/l_max: no reference summary .* 100 to 120 tokens"),
        (["world.num_align=2"], r"world.l_min/l_max|world.num_align"),
        (["world.max_facts=12"], r"world.max_facts: must be at most 8"),
    ],
)
def test_a_world_its_corpus_cannot_make_is_refused_in_one_line_before_anything_is_written(
    capsys, tmp_path, settings, message
):
    out = tmp_path / "world"
    line = refused(capsys, ["world", *SMALL_WORLD, f"world.out_dir={out}", *settings])
    assert re.search(message, line), line
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_a_world_out_dir_that_is_a_root_or_a_file_is_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "a-file").write_text("mine\n")
    for out_dir in ("/", str(tmp_path / "a-file"), str(tmp_path / "a-file" / "world")):
        refused(capsys, ["world", *SMALL_WORLD, f"world.out_dir={out_dir}"])
    assert (tmp_path / "a-file").read_text() == "mine\n"


@pytest.mark.integration
def test_an_engine_that_is_not_installed_is_refused_naming_the_extra_before_any_file_is_written(
    capsys, micro_world, tmp_path
):
    with pytest.raises(ConfigError, match=r"^cache.engine=ray: needs the w2s_no_such_ray package, which is not "):
        require_installed("w2s_no_such_ray", "cache.engine=ray", "ray")  # Ray's absence, simulated
    with pytest.raises(ConfigError, match=r"pip install 'w2s\[ray\]'$"):
        require_installed("w2s_no_such_ray.sub", "cache.engine=ray", "ray")
    if importlib.util.find_spec("ray") is not None:
        CacheConfig(engine="ray").check_installed()  # installed: nothing to refuse
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: its absence is checked in the environment without it")
    world = [f"world.out_dir={micro_world}"]
    generate = tmp_path / "generate"
    line = refused(capsys, ["generate", *world, "generate.engine=vllm", f"generate.out_dir={generate}"])
    assert (
        line == "w2s generate: generate.engine=vllm: needs the vllm package, which is not installed here: " + GPU_EXTRA
    )
    cache = tmp_path / "cache"
    line = refused(capsys, ["cache", *world, "cache.backend=vllm", f"cache.out_dir={cache}"])
    assert line.endswith(
        "cache.backend=vllm: needs the vllm package, which is not installed here: pip install 'w2s[gpu]'"
    )
    system = f"eval.systems=[{{name: s, model: {micro_world}/strong_base, engine: vllm}}]"
    line = refused(capsys, ["eval", *world, system, f"eval.out_dir={tmp_path / 'eval'}"])
    assert "eval.systems[s].engine=vllm: needs the vllm package" in line and line.endswith(GPU_EXTRA)
    assert not generate.exists() and not cache.exists()


def test_a_reference_gap_from_differing_precisions_names_both_settings():
    mask = torch.ones(1, 4)
    cached = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    policy = cached + 0.0384  # what a bf16 policy measures against a float32 cache
    with pytest.raises(CacheMismatch) as refusal:
        check_reference_batch(policy, cached, mask, "float32", "p", "r", precision=("auto", "bfloat16"))
    message = str(refusal.value)
    assert "by 0.0384 nats per token" in message
    assert "the cache scored it in float32 (cache.model_dtype) and this run trains in bfloat16" in message
    assert "train.precision=fp32, or rebuild the cache with cache.model_dtype=bfloat16" in message
    with pytest.raises(CacheMismatch, match=r"not the same model at the same precision. Use the cache's strong"):
        check_reference_batch(policy, cached, mask, "float32", "p", "r", precision=("fp32", "float32"))
    with pytest.raises(CacheMismatch, match=r"Match them: rebuild the cache with cache.model_dtype=bfloat16$"):
        check_reference_batch(cached + 0.5, cached, mask, "float16", "p", "r", precision=("bf16", "bfloat16"))


def limit_file_size() -> None:
    """In the child: files may grow to 10 kB, more than any shard of the micro cache, less than its tokenizer.json
    (14.7 kB); a write past it fails with EFBIG instead of killing the process (SIGXFSZ ignored)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))


@pytest.mark.integration
def test_a_full_disk_while_the_tokenizer_copy_is_written_is_one_line(micro_world, tmp_path):
    out = tmp_path / "cache"
    argv = ["cache", f"world.out_dir={micro_world}", f"cache.out_dir={out}", "cache.format=parquet"]
    argv += ["cache.rows_per_shard=4"]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "w2s.cli", *argv],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        env=env,
        cwd=Path(__file__).parents[2],
        timeout=600,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"w2s cache: {out}/.tokenizer.tmp-") and lines[0].endswith(
        "tokenizer.json: File too large"
    )
    assert not (out / "manifest.json").exists()  # the cache is not published

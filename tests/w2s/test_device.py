"""The per-device defaults behind `auto` (w2s.device): the rules on given flag sets, and that an explicit value is
never changed."""

from __future__ import annotations

import dataclasses

import pytest

from w2s.cache.config import CacheConfig
from w2s.config import ConfigError
from w2s.device import (
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    body_params,
    cpu_flags,
    cpu_has_bf16,
    pick_batch_tokens,
    pick_model_dtype,
    resolve_model_dtype,
)

SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
SKYLAKE = frozenset({"avx2", "avx512f", "avx512bw"})


@pytest.mark.parametrize(
    ("flags", "capability", "expected"),
    [
        (SAPPHIRE_RAPIDS, "AVX512", True),
        (ZEN4, "AVX512", True),
        (SKYLAKE, "AVX512", False),
        (frozenset({"avx2"}), "AVX2", False),
        (frozenset(), "AMX", True),  # no /proc/cpuinfo, but torch sees AMX
        (frozenset(), "", False),
    ],
)
def test_cpu_bf16_is_read_from_the_flags_or_torch(flags, capability, expected):
    assert cpu_has_bf16(flags, capability) is expected


def test_cpu_flags_are_read_from_a_cpuinfo_file(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\nbugs\t\t: spectre\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("setting", "device", "native", "expected"),
    [
        ("auto", "cpu", True, "bfloat16"),
        ("auto", "cpu", False, "float32"),
        ("auto", "cuda", True, "bfloat16"),
        ("auto", "cuda:1", False, "float32"),
        ("auto", "mps", False, "float32"),
        ("float32", "cuda", True, "float32"),  # an explicit value wins
        ("float16", "cpu", True, "float16"),
        ("bfloat16", "cpu", False, "bfloat16"),
    ],
)
def test_model_dtype_rule(setting, device, native, expected):
    assert pick_model_dtype(setting, device, native) == expected


SMOLLM2_135M = 119_439_360  # body parameters by body_params: 30 layers, hidden 576, intermediate 1536


@pytest.mark.parametrize(
    ("setting", "device", "params", "expected"),
    [
        ("auto", "cuda", SMOLLM2_135M, GPU_BATCH_TOKENS),
        ("auto", "cuda:3", 0, GPU_BATCH_TOKENS),
        ("auto", "cpu", SMOLLM2_135M, 1024),
        ("auto", "cpu", 7_000_000_000, 1024),  # never below the smallest budget
        ("auto", "cpu", 30_000_000, 4096),
        ("auto", "cpu", 200_000, 8192),  # a tiny model: batching pays, up to the largest budget
        ("auto", "cpu", 0, CPU_BATCH_TOKENS[0]),  # unknown size: the smallest
        ("auto", "mps", SMOLLM2_135M, 1024),
        (8192, "cpu", SMOLLM2_135M, 8192),  # an explicit value wins
        (300, "cuda", 0, 300),
    ],
)
def test_batch_tokens_rule(setting, device, params, expected):
    assert pick_batch_tokens(setting, device, params) == expected


def test_body_params_of_smollm2():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=576, num_hidden_layers=30, intermediate_size=1536, num_attention_heads=9)
    assert body_params(config) == SMOLLM2_135M


def test_explicit_dtype_is_never_asked_of_the_machine():
    assert resolve_model_dtype("float16", "cuda:7") == "float16"  # no GPU here: it would fail if resolved


def test_cache_config_resolves_auto_once_and_keeps_explicit_values():
    config = CacheConfig(model_dtype="auto", batch_tokens="auto", device="cpu")
    assert config.model_dtype == ("bfloat16" if cpu_has_bf16(cpu_flags()) else "float32")
    explicit = CacheConfig(model_dtype="float32", batch_tokens=8192, device="cpu")
    assert (explicit.model_dtype, explicit.batch_tokens) == ("float32", 8192)
    again = dataclasses.replace(config)  # a resolved config stays as resolved
    assert again.model_dtype == config.model_dtype


def test_cache_default_dtype_is_float32():
    assert CacheConfig(device="cpu").model_dtype == "float32"  # bf16 is one setting away (docs/performance.md)


@pytest.mark.parametrize("bad", [0, -5])
def test_batch_tokens_below_one_is_refused(bad):
    with pytest.raises(ConfigError, match="cache.batch_tokens"):
        CacheConfig(batch_tokens=bad)


def test_batch_tokens_override_takes_auto_or_a_number():
    from w2s.config import load_config
    from w2s.settings import Settings

    assert load_config(Settings, "configs/tiny.yaml", ["cache.batch_tokens=auto"]).cache.batch_tokens == "auto"
    assert load_config(Settings, "configs/tiny.yaml", ["cache.batch_tokens=512"]).cache.batch_tokens == 512
    with pytest.raises(ConfigError, match="cache.batch_tokens"):
        load_config(Settings, "configs/tiny.yaml", ["cache.batch_tokens=big"])

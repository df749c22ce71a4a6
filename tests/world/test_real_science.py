"""Weak to strong across tokenizers on real weights, at reduced size: the cross-tokenizer signal the cache stores
(SmolLM2 pair, Gemma-3 strong) against an independent recount, and `make science-real`'s driver end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from w2s.align import align_response, chunk_sums
from w2s.cache.config import CacheConfig
from w2s.cache.run import run as build_cache
from w2s.models import load_causal_lm, load_tokenizer
from w2s.science.real import ScienceRealConfig, run
from w2s.science.real_data import make_data, response_token_logps, write_data
from w2s.source import DataSource
from w2s.world.dpo import DpoSettings

pytestmark = pytest.mark.slow


def expected_signal(world: Path, prompt: str, response: str) -> np.ndarray:
    """The weak pair's log-ratio in Gemma's token space, recounted without the cache: each weak token's
    log pi_aligned - log pi_base (EOS last), summed per chunk of `w2s.align`, placed at the chunk's last strong
    token."""
    smol, gemma = (
        load_tokenizer("weak", str(world / "weak_base")),
        load_tokenizer("strong", str(world / "strong_gemma")),
    )
    ratio = [
        response_token_logps(_model(world / name), smol, prompt, response)[0] for name in ("weak_aligned", "weak_base")
    ]
    alignment = align_response(gemma, smol, response, "row")
    sums = chunk_sums((ratio[0] - ratio[1]).numpy(), alignment.weak_chunk, alignment.num_chunks)
    chunk_of = np.asarray(alignment.strong_chunk)
    last = np.append(chunk_of[1:] != chunk_of[:-1], True)
    placed = np.zeros(len(chunk_of), np.float32)
    placed[last] = sums[chunk_of[last]]
    return placed


_MODELS: dict = {}


def _model(path: Path):
    if path not in _MODELS:
        _MODELS[path] = load_causal_lm("weak", str(path)).eval()
    return _MODELS[path]


def signal_errors(cached: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """Largest absolute difference between cached and recounted signals (inf when the shapes differ)."""
    worst = 0.0
    for a, b in zip(cached, expected, strict=True):
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def test_cached_cross_tokenizer_signal_matches_an_independent_recount(real_world, tmp_path):
    data = make_data(0, 2, 2, 15, 30)
    rows = data["cache"][:6]  # two topics: a short, an in-window and a long answer each
    write_data(tmp_path / "data", {"cache": rows})
    source = DataSource(str(tmp_path / "data" / "cache.jsonl"), id_field="id")
    build_cache(CacheConfig(out_dir=str(tmp_path / "cache"), data=source, weak_base=str(real_world / "weak_base"),
                            weak_aligned=str(real_world / "weak_aligned"), strong_ref=str(real_world / "strong_gemma"),
                            backend="transformers", max_len=256))  # fmt: skip
    table = pq.read_table(sorted((tmp_path / "cache" / "parquet").glob("*.parquet"))).to_pylist()
    by_id = {row["example_id"]: row for row in table}
    gemma = load_tokenizer("strong", str(real_world / "strong_gemma"))
    cached, expected = [], []
    for row in rows:
        stored = by_id[row["id"]]
        response_ids = stored["input_ids"][stored["prompt_len"] :]
        assert response_ids[:-1] == gemma(row["response"], add_special_tokens=False)["input_ids"]  # Gemma's ids
        cached.append(np.asarray(stored["weak_log_ratio"], np.float32))
        expected.append(expected_signal(real_world, row["prompt"], row["response"]))
        assert cached[-1].sum() == pytest.approx(stored["weak_seq_reward"], abs=1e-3)
    assert signal_errors(cached, expected) < 2e-3
    # the same check catches a broken signal: chunk sums moved to other chunks, or the weak pair swapped
    rng = np.random.default_rng(0)
    shuffled = [np.where(c != 0, rng.permutation(c), 0) if (c != 0).sum() > 1 else c for c in cached]
    shuffled = [rng.permutation(c) for c in shuffled]
    assert signal_errors(shuffled, expected) > 0.1
    assert signal_errors([-c for c in cached], expected) > 0.1


def test_science_real_runs_end_to_end_at_reduced_size_and_resumes(real_world, tmp_path):
    config = ScienceRealConfig(
        out_dir=str(tmp_path / "science-real"), world=str(real_world), seeds=[0], gammas=[0.3], num_val_topics=1,
        num_test_topics=1, num_train_topics=4, dpo=DpoSettings(steps=2, batch_size=4), max_new_tokens=12, resamples=200,
        search={"width": 2, "num_samples": 2, "chunk_len": 6},
    )  # fmt: skip
    config.train.max_steps, config.sft.steps = 2, 1
    torch.manual_seed(0)
    report = run(config)
    saved = json.loads((Path(config.out_dir) / "report.json").read_text())
    assert saved["layout"] == "real" and saved == json.loads(json.dumps(report))
    task = saved["tasks"]["length"]
    assert set(task["systems"]) == {"weak_base", "weak_aligned", "strong_base", "wspo", "sft_ceiling", "search",
                                    "bon_matched", "mcts"}  # fmt: skip
    assert 0 < task["systems"]["mcts"]["strong_tokens"] <= task["systems"]["search"]["strong_tokens"]
    for system in task["systems"].values():
        assert -10 < system["ref_loglik"]["mean"] < 0 and system["tokens"]["mean"] > 0
    assert task["systems"]["search"]["weak_tokens"] > 0 and task["systems"]["wspo"]["weak_tokens"] == 0
    assert {claim["verdict"] for claim in task["claims"]} <= {"holds", "fails", "inconclusive"}
    assert task["selection"]["gamma"]["chosen"] == 0.3 and "beta" not in task["selection"]
    pair = saved["weak_pair"]
    assert set(pair["ratio_dpo"]["eos_by_kind"]) == {"short", "window", "long"}
    assert 0 <= saved["alignment"]["share_chars_multi_strong"] < 0.5
    assert (Path(config.out_dir) / "science-real.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun reuses every stage (same settings, files checked) and gives the same report
    assert run(config)["tasks"]["length"]["systems"] == report["tasks"]["length"]["systems"]

"""`w2s generate` / `w2s search`: one system on a prompt set, written in atomic parts, resumable, with its cost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from w2s.cli import main
from w2s.eval.config import GenerateConfig
from w2s.eval.generate import run, search
from w2s.eval.responses import read_records
from w2s.io import read_jsonl
from w2s.runs import FolderRefused
from w2s.search.scorer import WeakScorer
from w2s.source import DataSource


def untimed(path: Path) -> list[dict]:
    """The records of a responses file without their `seconds` (the only field that differs between runs)."""
    return [{k: v for k, v in record.items() if k != "seconds"} for record in read_records(path)]


def config_for(world: Path, out: Path, **overrides) -> GenerateConfig:
    fields = dict(
        out_dir=str(out),
        prompts=DataSource(str(world / "data" / "test.jsonl")),
        model=str(world / "strong_base"),
        weak_base=str(world / "weak_base"),
        weak_aligned=str(world / "weak_aligned"),
        tokenizer=str(world / "tokenizer"),
        max_new_tokens=12,
        limit=5,
        save_every=2,
    )
    return GenerateConfig(**{**fields, **overrides})


def test_sampling_writes_responses_alpaca_file_and_costs(micro_world, tmp_path):
    summary = run(config_for(micro_world, tmp_path / "g"))
    records = read_records(tmp_path / "g" / "responses.jsonl")
    prompts = read_jsonl(micro_world / "data" / "test.jsonl")[:5]
    assert [r["id"] for r in records] == [p["example_id"] for p in prompts] and summary["prompts"] == 5
    for record in records:  # plain sampling: the response plus its EOS, nothing scored by the weak pair
        assert record["strong_tokens"] == len(record["token_ids"]) + (len(record["token_ids"]) < 12)
        assert record["weak_tokens"] == 0 and record["weak_score"] is None
    alpaca = json.loads((tmp_path / "g" / "model_outputs.json").read_text())
    assert [set(row) for row in alpaca] == [{"instruction", "output", "generator"}] * 5
    assert [row["instruction"] for row in alpaca] == [p["prompt"] for p in prompts]
    assert [row["output"] for row in alpaca] == [r["output"] for r in records]
    assert {row["generator"] for row in alpaca} == {"strong_base+sample"}
    assert sorted(p.name for p in (tmp_path / "g" / "parts").iterdir()) == [f"part-0000{i}.jsonl" for i in range(3)]


def test_search_records_weak_compute_and_matches_the_python_api(micro_world, tmp_path):
    params = {"width": 2, "num_samples": 2, "chunk_len": 4}
    run(config_for(micro_world, tmp_path / "s", generator="cbs", params=params, limit=3))
    records = read_records(tmp_path / "s" / "responses.jsonl")
    assert all(r["weak_tokens"] > 0 and r["strong_tokens"] > len(r["token_ids"]) for r in records)
    prompts = [p["prompt"] for p in read_jsonl(micro_world / "data" / "test.jsonl")[:3]]
    again = search(
        prompts,
        str(micro_world / "strong_base"),
        str(micro_world / "weak_base"),
        str(micro_world / "weak_aligned"),
        params=params,
        max_new_tokens=12,
        tokenizer=str(micro_world / "tokenizer"),
    )
    assert [r["output"] for r in again] == [r["output"] for r in records]  # prompt i is drawn with seed + i
    assert [r["weak_tokens"] for r in again] == [r["weak_tokens"] for r in records]


def test_bon_costs_n_samples_and_eft_costs_one_weak_step_per_token(micro_world, tmp_path):
    run(config_for(micro_world, tmp_path / "b", generator="bon", params={"n": 3}, limit=2))
    for record in read_records(tmp_path / "b" / "responses.jsonl"):
        assert record["strong_tokens"] >= 3 and record["weak_tokens"] >= 3  # 3 candidates, each at least an EOS
    run(config_for(micro_world, tmp_path / "e", generator="eft", params={"beta": 1.0}, limit=2))
    for record in read_records(tmp_path / "e" / "responses.jsonl"):
        assert record["weak_tokens"] == record["strong_tokens"] == len(record["token_ids"]) + record["finished"]


def test_a_resumed_run_keeps_finished_parts_and_writes_what_an_uninterrupted_one_would(micro_world, tmp_path):
    config = config_for(micro_world, tmp_path / "r", generator="cbs", params={"width": 2, "num_samples": 2})
    run(config)
    whole = untimed(tmp_path / "r" / "responses.jsonl")
    parts = tmp_path / "r" / "parts"
    kept = (parts / "part-00000.jsonl").stat().st_mtime_ns
    (parts / "part-00001.jsonl").unlink()  # as a run killed after its first part leaves it
    (tmp_path / "r" / "responses.jsonl").unlink()
    summary = run(config)
    assert summary["parts_resumed"] == 2 and (parts / "part-00000.jsonl").stat().st_mtime_ns == kept
    assert untimed(tmp_path / "r" / "responses.jsonl") == whole


def test_a_folder_of_another_run_is_refused_naming_what_differs(micro_world, tmp_path):
    run(config_for(micro_world, tmp_path / "x", limit=2))
    with pytest.raises(FolderRefused, match=r"holds another run of `w2s generate` \(.*temperature"):
        run(config_for(micro_world, tmp_path / "x", limit=2, temperature=0.3))


def test_eft_across_vocabularies_and_bad_params_are_refused_in_one_line(micro_world, tmp_path, capsys):
    strong = other_tokenizer_model(tmp_path / "other")
    args = [f"generate.{k}={v}" for k, v in vars_of(micro_world, tmp_path / "o", str(strong)).items()]
    assert main(["search", *args, "generator=eft"]) == 2
    assert "EFT needs one shared vocabulary" in capsys.readouterr().err
    assert main(["search", *args, "params.width=0"]) == 2
    assert "generate.params.width: must be an integer >= 1" in capsys.readouterr().err


def vars_of(world: Path, out: Path, model: str) -> dict:
    return {k: v if isinstance(v, int) else str(v) for k, v in paths_of(world, out, model).items()}


def paths_of(world: Path, out: Path, model: str) -> dict:
    return {
        "out_dir": out,
        "prompts": world / "data" / "test.jsonl",
        "model": model,
        "weak_base": world / "weak_base",
        "weak_aligned": world / "weak_aligned",
        "tokenizer": world / "tokenizer",
        "limit": 2,
        "max_new_tokens": 8,
    }


def other_tokenizer_model(folder: Path) -> Path:
    """A random strong model with its own byte-level BPE tokenizer (another vocabulary than the world's)."""
    if (folder / "config.json").exists():
        return folder
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["The quick brown fox reports three boats in Lisbon.", "Summarise the document in one sentence."] * 50
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1
    )
    config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_search_steers_a_strong_model_with_another_tokenizer(micro_world, tmp_path):
    strong = other_tokenizer_model(tmp_path / "other")
    assert len(AutoTokenizer.from_pretrained(strong)) != len(AutoTokenizer.from_pretrained(micro_world / "tokenizer"))
    config = GenerateConfig(
        **vars_of(micro_world, tmp_path / "c", str(strong)), generator="cbs", params={"chunk_len": 3}
    )
    run(config)
    weak = AutoTokenizer.from_pretrained(micro_world / "weak_aligned")
    from transformers import AutoModelForCausalLM

    load = lambda name: AutoModelForCausalLM.from_pretrained(micro_world / name).eval()  # noqa: E731
    scorer = WeakScorer(load("weak_aligned"), load("weak_base"), weak)
    prompts = read_jsonl(micro_world / "data" / "test.jsonl")
    for record, prompt in zip(read_records(tmp_path / "c" / "responses.jsonl"), prompts):
        # the weak pair scored the strong model's decoded text, re-tokenised with the weak tokenizer
        expected = scorer.score(prompt["prompt"], [record["output"]], [record["finished"]])[0]
        assert record["weak_score"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.integration
@pytest.mark.slow  # a process killed and rerun: tens of seconds; in `make test`, not `make test-fast`
def test_a_killed_run_resumes_without_redoing_finished_prompts(micro_world, tmp_path):
    out = tmp_path / "k"
    args = [f"generate.{k}={v}" for k, v in vars_of(micro_world, out, str(micro_world / "strong_base")).items()]
    args += ["generate.limit=8", "generate.save_every=1", "generate.generator=bon", "generate.params.n=6"]
    command = [sys.executable, "-m", "w2s.cli", "generate", *args]
    env = dict(os.environ, TQDM_DISABLE="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "parts" / "part-00001.jsonl").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(p.name for p in (out / "parts").glob("part-*.jsonl"))
    assert 2 <= len(finished) < 8 and not (out / "responses.jsonl").exists()
    stamps = {name: (out / "parts" / name).stat().st_mtime_ns for name in finished}
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert {name: (out / "parts" / name).stat().st_mtime_ns for name in finished} == stamps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 8 and summary["parts_resumed"] == len(finished)
    clean = tmp_path / "clean"
    clean_args = [a.replace(str(out), str(clean)) for a in args]
    subprocess.run([*command[:4], *clean_args], env=env, check=True, capture_output=True)
    assert untimed(out / "responses.jsonl") == untimed(clean / "responses.jsonl")

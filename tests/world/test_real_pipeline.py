"""The whole path on real weights (the real world: SmolLM2-135M weak pair, Gemma-3-270M strong): cache -> train ->
search (across tokenizers: Gemma steered by SmolLM2) -> generate -> eval, through the `w2s` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from w2s.cli import main
from w2s.eval.responses import read_records
from w2s.rewards import length_reward

pytestmark = pytest.mark.slow

REAL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "real.yaml"


def w2s(command: str, root: Path, world: Path, *overrides: str) -> None:
    """Runs one `w2s` command on configs/real.yaml with the run root and world moved to the test's folders."""
    args = [command, "--config", str(REAL_CONFIG), f"run_root={root}", f"world.out_dir={world}", *overrides]
    assert main(args) == 0, f"w2s {' '.join(args)} failed"


def search_args(out: Path, model: Path | str) -> list[str]:
    return [
        f"out_dir={out}",
        f"model={model}",
        "prompts.path={world}/data/prompts.jsonl",
        "prompts.id_field=id",
        "limit=2",
        "max_new_tokens=8",
        "params.width=2",
        "params.num_samples=2",
        "params.chunk_len=4",
        "weak_base={world}/weak_base",
        "weak_aligned={world}/weak_aligned",
        "threads=2",
    ]


def assert_sane(record: dict) -> None:
    """A response a person would call text: not empty, and not one token over and over (Gemma fed without its BOS
    gave `<h2><h2>...`, runs of newlines and empty strings, and the pipeline still passed)."""
    ids = record["token_ids"]
    assert record["output"].strip(), record
    most = max(ids.count(token) for token in set(ids))
    assert most <= max(2, len(ids) // 2), record


def test_cache_train_search_generate_eval_on_real_weights(real_world, tmp_path):
    root = tmp_path / "run"
    rows = (real_world / "data" / "cache.jsonl").read_text().splitlines(keepends=True)[::3]  # 8 rows, every length
    (tmp_path / "cache.jsonl").write_text("".join(rows))
    w2s("cache", root, real_world, f"data.path={tmp_path / 'cache.jsonl'}")
    manifest = json.loads((root / "cache" / "manifest.json").read_text())
    assert manifest["totals"]["rows"] == len(rows) and "strong_ref" in manifest["provenance"]["models"]
    w2s("train", root, real_world, "max_steps=2")
    assert (root / "wspo" / "final" / "config.json").exists() and (root / "wspo" / "done.json").exists()

    # search across tokenizers: Gemma-3 (another family, 262k vocabulary) steered by the SmolLM2 pair
    w2s("search", root, real_world, *search_args(root / "search-gemma", "{world}/strong_gemma"))
    gemma = AutoTokenizer.from_pretrained(real_world / "strong_gemma")
    smol = AutoTokenizer.from_pretrained(real_world / "weak_base")
    assert len(gemma) != len(smol)
    for record in read_records(root / "search-gemma" / "responses.jsonl"):
        assert record["output"] == gemma.decode(record["token_ids"], skip_special_tokens=True)
        assert_sane(record)
        assert record["strong_tokens"] > len(record["token_ids"]) and record["weak_tokens"] > 0

    # generate with the WSPO model, then eval: the length task scores both runs' recorded responses
    generate = root / "generate"
    w2s("generate", root, real_world, f"out_dir={generate}", "model={wspo}/final",
        "prompts.path={world}/data/prompts.jsonl", "prompts.id_field=id", "limit=2", "max_new_tokens=16",
        "threads=2")  # fmt: skip
    for record in read_records(generate / "responses.jsonl"):
        assert_sane(record)
    alpaca = json.loads((generate / "model_outputs.json").read_text())
    assert len(alpaca) == 2 and {"instruction", "output", "generator"} == set(alpaca[0])
    systems = (
        f"[{{name: wspo, model: '{root}/wspo/final', responses: '{generate}'}}, "
        f"{{name: gemma+search, model: '{real_world}/strong_gemma', responses: '{root}/search-gemma'}}]"
    )
    prompts = f"{{path: '{real_world}/data/prompts.jsonl', id_field: id}}"
    task = f"{{_component_: w2s.eval.tasks.LengthTask, prompts: {prompts}}}"
    w2s("eval", root, real_world, f"eval.systems={systems}", f"eval.task={task}", "num_examples=2", "gamma_sweep=false")
    report = json.loads((root / "eval" / "report.json").read_text())
    for name, folder in (("wspo", generate), ("gemma+search", root / "search-gemma")):
        lengths = [len(r["token_ids"]) for r in read_records(folder / "responses.jsonl")]
        expected = sum(length_reward(n) for n in lengths) / len(lengths)
        assert report["systems"][name]["length_reward"] == pytest.approx(expected)

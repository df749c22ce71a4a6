"""`w2s eval` on the micro world (a fake WSPO sweep made of strong-base copies), and the markdown table."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from w2s.cli import main
from w2s.eval.config import default_systems
from w2s.eval.report import Layout, markdown_table
from w2s.io import read_jsonl
from w2s.sampling import generate
from w2s.world.metrics import score_responses
from w2s.world.task import SummaryTask

SYSTEMS = [system.name for system in default_systems()]
BUDGET = ["num_examples=3", "max_new_tokens=10", "seed=3"]
SEARCH_PARAMS = {"cbs": {"width": 2, "num_samples": 2, "chunk_len": 4}, "bon": {"n": 4}}
METRIC_KEYS = ("length_reward", "content", "mean_tokens", "in_window", "sampled_tokens", "seconds")


def fake_wspo(root, strong_base):
    """A WSPO folder whose final/ and gamma-0.5/, gamma-1/ runs are copies of the strong base, each with the
    w2s_provenance.json that `w2s train` writes beside its final model (only train.loss is read)."""
    for run, gamma in (("", 0.1), ("gamma-0.5", 0.5), ("gamma-1", 1.0)):
        folder = root / run if run else root
        shutil.copytree(strong_base, folder / "final")
        (folder / "final" / "w2s_provenance.json").write_text(
            json.dumps({"train": {"loss": {"_component_": "wspo", "gamma": gamma}}})
        )
    return root


def eval_words(world, wspo, out) -> list[str]:
    """Overrides that point `w2s eval` at concrete folders: the default systems with the world's and WSPO's
    paths filled in and test-sized search budgets (W,K,L = 2,2,4; N = 4)."""
    fill = lambda path: path.replace("{world}", str(world)).replace("{wspo}", str(wspo))  # noqa: E731
    systems = [
        dict(
            name=s.name,
            model=fill(s.model),
            generator=s.generator,
            optional=s.optional,
            params=SEARCH_PARAMS.get(s.generator, s.params),
        )
        for s in default_systems()
    ]
    return [
        f"task.path={world}/data/test.jsonl",
        f"weak_base={world}/weak_base",
        f"weak_aligned={world}/weak_aligned",
        f"tokenizer={world}/tokenizer",
        f"wspo_dir={wspo}",
        f"out_dir={out}",
        f"systems={json.dumps(systems)}",
        *BUDGET,
    ]


@pytest.fixture(scope="module")
def evaluated(micro_world, tmp_path_factory):
    """Runs `w2s eval` once through the CLI with tiny budgets; returns its output folder and report."""
    tmp = tmp_path_factory.mktemp("eval")
    wspo = fake_wspo(tmp / "wspo", micro_world / "strong_base")
    out = tmp / "out"
    assert main(["eval", *eval_words(micro_world, wspo, out)]) == 0
    return out, json.loads((out / "report.json").read_text())


@pytest.mark.integration
def test_report_has_every_system_with_metrics_in_range(evaluated):
    out, report = evaluated
    assert list(report["systems"]) == list(SYSTEMS) and report["skipped"] == {}
    for name, row in report["systems"].items():
        assert 0.0 <= row["length_reward"] <= 1.0 and 0.0 <= row["content"] <= 1.0, name
        assert 0.0 <= row["in_window"] <= 1.0 and 0.0 <= row["mean_tokens"] <= 10, name
        assert row["seconds"] >= 0 and len(row["samples"]) == 3, name
    plain = report["systems"]["strong_base"]
    assert plain["mean_tokens"] <= plain["sampled_tokens"] <= plain["mean_tokens"] + 1
    for name in ("strong_base+search", "strong_base+bon"):  # K*W candidates or N responses per prompt
        assert report["systems"][name]["sampled_tokens"] > plain["sampled_tokens"]
    assert report["budget"]["search_sampled_tokens"] == report["systems"]["strong_base+search"]["sampled_tokens"]
    assert [row["gamma"] for row in report["gamma_sweep"]] == [0.5, 1.0]
    assert report["systems"]["wspo"]["gamma"] == 0.1
    assert (out / "config.yaml").exists()


@pytest.mark.integration
def test_strong_base_numbers_equal_an_independent_recomputation(evaluated, micro_world):
    _, report = evaluated
    examples = read_jsonl(micro_world / "data" / "test.jsonl")[:3]
    tokenizer = AutoTokenizer.from_pretrained(micro_world / "strong_base")
    model = AutoModelForCausalLM.from_pretrained(micro_world / "strong_base").eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        responses = generate(model, tokenizer, [ex["prompt"] for ex in examples], max_new_tokens=10, seed=3)
    finally:
        torch.set_num_threads(threads)
    expected = score_responses(tokenizer, responses, examples, 20, 30)
    row = report["systems"]["strong_base"]
    assert {key: row[key] for key in expected} == expected
    assert row["samples"][0]["response"] == tokenizer.decode(responses[0], skip_special_tokens=True)
    # The fake WSPO models are copies of the strong base: same seed, same numbers.
    for copy in [report["systems"]["wspo"], *report["gamma_sweep"]]:
        assert {key: copy[key] for key in expected} == expected


@pytest.mark.integration
def test_markdown_report_and_plots(evaluated):
    out, report = evaluated
    text = (out / "report.md").read_text()
    for name in [*SYSTEMS, "wspo gamma=0.5", "wspo gamma=1"]:
        assert sum(line.startswith(f"| {name} |") for line in text.splitlines()) == 1, name
    for png in ("comparison.png", "reward_vs_gamma.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_missing_wspo_is_skipped_and_unknown_systems_are_refused(micro_world, tmp_path, capsys):
    words = eval_words(micro_world, tmp_path / "none", tmp_path / "out")
    assert main(["eval", *words, "run=[weak_base,wspo]"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["systems"]) == ["weak_base"] and "wspo" in report["skipped"]
    assert report["gamma_sweep"] == [] and report["budget"] is None
    assert not (tmp_path / "out" / "reward_vs_gamma.png").exists()
    assert main(["eval", *words, "run=[gpt5]"]) == 2
    assert "unknown system" in capsys.readouterr().err


def test_markdown_table_has_a_header_an_aligned_separator_and_one_row_per_system():
    row = dict(
        length_reward=0.98765, content=0.25, mean_tokens=24.46, in_window=0.9, sampled_tokens=204.2, seconds=19.44
    )
    columns = Layout.of(SummaryTask.metrics).columns
    table = markdown_table({"strong_base": row, "strong_base+search": dict(row, content=1.0)}, columns)
    assert table.splitlines() == [
        "| system | length reward | content | mean tokens | in window | sampled tokens | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| strong_base | 0.988 | 0.250 | 24.5 | 0.90 | 204.2 | 19.4 |",
        "| strong_base+search | 0.988 | 1.000 | 24.5 | 0.90 | 204.2 | 19.4 |",
    ]
    assert markdown_table({}, columns).count("\n") == 2

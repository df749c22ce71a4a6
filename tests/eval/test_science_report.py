"""The science report's selection, claims and tables, on synthetic per-prompt scores (no models)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from w2s.science.report import TINY, claims_summary, readme_text, select, write_science_report
from w2s.science.tiny import ScienceConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.doc_tables import markers, replace_between_markers  # noqa: E402

SEEDS = (0, 1, 2)
PROMPTS = 40


def row(reward: float, accuracy: float, seed: int, spread: float = 0.1) -> dict:
    """A system's saved row: per-prompt tone rewards around `reward`, clause accuracy around `accuracy`."""
    rng = np.random.default_rng(seed)
    rewards = np.clip(rng.normal(reward, spread, PROMPTS), 0, 1)
    accuracies = np.clip(rng.normal(accuracy, spread, PROMPTS), 0, 1)
    per_example = [
        {"tone_reward": r, "length_reward": r, "content": a, "clause_accuracy": a, "tokens": 25.0}
        for r, a in zip(rewards.tolist(), accuracies.tolist())
    ]
    return {"per_example": per_example, "sampled_tokens": 26.0, "weak_tokens": 0.0}


def config(tmp_path) -> ScienceConfig:
    return ScienceConfig(out_dir=str(tmp_path), tasks=["tone"], gammas=[0.1, 0.3, 1.0], eft_betas=[1.0], resamples=500)


def validation() -> dict:
    """gamma 0.1: most reward but capability lost; 0.3: more reward than 1.0, capability kept."""
    levels = {"strong_base": (0.5, 0.6), "wspo gamma=0.1": (0.95, 0.3), "wspo gamma=0.3": (0.85, 0.58)}
    levels.update({"wspo gamma=1": (0.7, 0.6), "eft beta=1": (0.6, 0.6)})
    return {(s, "tone"): {name: row(*lv, seed=s + i) for i, (name, lv) in enumerate(levels.items())} for s in SEEDS}


def test_selection_takes_the_best_reward_that_keeps_capability(tmp_path):
    choice = select(config(tmp_path), "tone", validation())
    assert choice["gamma"]["chosen"] == 0.3 and "clause accuracy" in choice["gamma"]["why"]
    assert [point["eligible"] for point in choice["gamma"]["sweep"]] == [False, True, True]
    assert choice["beta"]["chosen"] == 1.0


def test_report_claims_hold_fail_or_are_inconclusive_as_the_scores_say(tmp_path):
    cfg = config(tmp_path)
    levels = dict.fromkeys(TINY.systems, (0.5, 0.6))
    levels.update({"weak_aligned": (0.75, 0.1), "weak_base": (0.5, 0.1), "wspo": (0.9, 0.62), "search": (0.5, 0.6)})
    test = {
        (s, "tone"): {name: row(*lv, seed=10 * s + i) for i, (name, lv) in enumerate(levels.items())} for s in SEEDS
    }
    report = write_science_report(cfg, validation(), test, {"tone": select(cfg, "tone", validation())})
    verdicts = {claim["claim"].split(":")[0]: claim["verdict"] for claim in report["tasks"]["tone"]["claims"]}
    assert verdicts["weak aligned > weak base (reward)"] == "holds"
    assert verdicts["strong + WSPO > weak aligned (reward)"] == "holds"
    assert verdicts["WSPO keeps capability"] == "holds"
    assert verdicts["search > weak aligned (reward)"] == "fails"
    assert verdicts["search > best-of-N at matched strong tokens (reward)"] == "inconclusive"
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "science.png").read_bytes()[:4] == b"\x89PNG"
    text = readme_text(saved)
    assert re.search(r"\| wspo \| 0\.[89]\d\d \[0\.\d{3}, 0\.\d{3}\] \|", text)
    assert "| **yes** |" in text and "Chosen gamma = 0.3" in text


def test_readme_markers_are_replaced_and_required():
    text = "intro\n<!-- science-table -->\nold\n<!-- /science-table -->\nend\n"
    science = markers("science-table")
    assert replace_between_markers(text, "new", science) == (
        "intro\n<!-- science-table -->\nnew\n<!-- /science-table -->\nend\n"
    )
    with pytest.raises(ValueError, match="science-table"):
        replace_between_markers("no markers", "new", science)
    named = ("<!-- s -->", "<!-- /s -->")
    assert replace_between_markers("<!-- s -->x<!-- /s -->", "y", named) == "<!-- s -->\ny\n<!-- /s -->"
    assert markers("t", "begin") == ("<!-- t:begin -->", "<!-- t:end -->")


def test_real_layout_report_has_its_own_systems_metrics_claims_and_only_gamma(tmp_path):
    """`make science-real`'s layout: words and reference log-likelihood per byte, gamma the only knob."""
    from w2s.science.real import ScienceRealConfig
    from w2s.science.report import REAL

    cfg = ScienceRealConfig(out_dir=str(tmp_path), gammas=[0.1, 0.3], resamples=300)

    def real_row(reward: float, loglik: float, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        rewards, logliks = np.clip(rng.normal(reward, 0.1, PROMPTS), 0, 1), rng.normal(loglik, 0.02, PROMPTS)
        per_example = [{"length_reward": float(r), "words": 20.0, "ref_loglik": float(c), "tokens": 30.0}
                       for r, c in zip(rewards, logliks)]  # fmt: skip
        return {"per_example": per_example, "sampled_tokens": 30.0, "weak_tokens": 0.0}

    val_levels = {"strong_base": (0.1, -0.5), "wspo gamma=0.1": (0.9, -0.9), "wspo gamma=0.3": (0.6, -0.52)}
    val = {(s, "length"): {n: real_row(*lv, s + i) for i, (n, lv) in enumerate(val_levels.items())} for s in SEEDS}
    levels = dict.fromkeys(REAL.systems, (0.1, -0.5)) | {"wspo": (0.6, -0.52), "weak_aligned": (0.4, -0.45)}
    test = {(s, "length"): {n: real_row(*lv, 7 * s + i) for i, (n, lv) in enumerate(levels.items())} for s in SEEDS}
    choices = {"length": select(cfg, "length", val)}
    assert choices["length"]["gamma"]["chosen"] == 0.3 and set(choices["length"]) == {"gamma"}
    report = write_science_report(cfg, val, test, choices, extra={"weak_pair": {"note": 1}})
    assert report["layout"] == "real" and report["weak_pair"] == {"note": 1}
    verdicts = {c["a"] + ">" + c["b"] + ":" + c["metric"]: c["verdict"] for c in report["tasks"]["length"]["claims"]}
    assert verdicts["wspo>strong_base:reward"] == "holds" and verdicts["wspo>strong_base:ref_loglik"] == "holds"
    assert verdicts["search>strong_base:reward"] == "inconclusive"
    text = readme_text(json.loads((tmp_path / "report.json").read_text()))
    assert "| system | reward | words | ref log-lik / byte | tokens |" in text and "EFT" not in text
    summary = claims_summary(report)
    assert "WSPO gamma 0.3, chosen on validation" in summary and summary.count("| holds |") >= 2
    assert (tmp_path / "science-real.png").read_bytes()[:4] == b"\x89PNG"


def test_two_runs_are_compared_claim_by_claim_with_wspo_paired_between_them(tmp_path):
    """A variant run whose WSPO rows are the base's plus 0.1 on every prompt: the paired difference is exactly
    0.1, the claims of both runs are side by side and a verdict that moved is marked; a missing run is refused."""
    from w2s.errors import UserError
    from w2s.science.compare_runs import compare, main, markdown

    levels = dict.fromkeys(TINY.systems, (0.5, 0.6))
    runs = {}
    for name, shift in (("base", 0.0), ("variant", 0.1)):
        out = tmp_path / name
        test = {(s, "tone"): {system: row(*lv, seed=10 * s + i) for i, (system, lv) in enumerate(levels.items())}
                for s in SEEDS}  # fmt: skip
        for s in SEEDS:
            wspo = test[(s, "tone")]["wspo"]
            for example in wspo["per_example"]:
                example["tone_reward"] += shift
            (out / f"seed-{s}" / "tone" / "test").mkdir(parents=True)
            (out / f"seed-{s}" / "tone" / "test" / "wspo.row.json").write_text(json.dumps(wspo))
        write_science_report(config(out), validation(), test, {"tone": select(config(out), "tone", validation())})
        runs[name] = out
    report = compare(runs["base"], runs["variant"])
    reward = report["tasks"]["tone"]["wspo_variant_minus_base"]["reward"]["difference"]
    assert reward["mean"] == pytest.approx(0.1) and reward["low"] == pytest.approx(0.1)
    assert report["tasks"]["tone"]["wspo_variant_minus_base"]["clause_accuracy"]["difference"]["mean"] == 0
    claim = next(c for c in report["tasks"]["tone"]["claims"] if c["claim"].startswith("strong + WSPO > strong base"))
    assert claim["variant"]["mean"] == pytest.approx(claim["base"]["mean"] + 0.1)
    assert claim["base_verdict"] != claim["variant_verdict"] and "(changed)" in markdown(report)
    with pytest.raises(UserError, match="no science report here"):
        compare(runs["base"], tmp_path / "nowhere")
    assert main([str(runs["base"]), str(tmp_path / "nowhere"), str(tmp_path / "out.json")]) == 2
    mine = tmp_path / "notes.json"  # a user's file named as OUT is refused and left as it is
    mine.write_text('{"my": "notes"}')
    assert main([str(runs["base"]), str(runs["variant"]), str(mine)]) == 2 and mine.read_text() == '{"my": "notes"}'
    out = tmp_path / "report.json"  # the command's own report is written, and written again on a rerun
    assert main([str(runs["base"]), str(runs["variant"]), str(out)]) == 0
    assert main([str(runs["base"]), str(runs["variant"]), str(out)]) == 0 and json.loads(out.read_text())["tasks"]

"""Monte Carlo tree search (`mcts`) on the micro world's real models: PUCT, backup, final choice, distinct
siblings, the value and prior formulas recomputed by hand, the token budget, determinism and resumable runs."""

from __future__ import annotations

import math

import pytest
import torch

from w2s.eval.generate import run
from w2s.eval.responses import read_records
from w2s.sampling import encode_prompt
from w2s.search.components import SEARCHES
from w2s.search.mcts import (
    Node,
    TreeSettings,
    backup,
    final_candidates,
    grow_tree,
    prior,
    puct,
    select_path,
    tree_search,
)
from w2s.search.samplers import HFSampler, entropy_bits, warped_logprobs

MAX_NEW = 12


def settings(**overrides) -> TreeSettings:
    return TreeSettings(**{**dict(num_children=3, chunk_len=3, budget=60, max_new_tokens=MAX_NEW), **overrides})


def search(world, seed: int = 0, **overrides):
    sampler = HFSampler(world.strong, world.tokenizer)
    return tree_search(sampler, world.scorer, world.prompt, settings(**overrides), seed)


def test_puct_is_the_papers_formula():
    # Q + c * P * sqrt(N_parent) / (1 + N_child) * (1 + w * H_parent), by hand for two settings
    assert puct(0.5, 0.25, 9, 2, 3.0, 1.5, 0.2) == pytest.approx(0.5 + 1.5 * 0.25 * 3 / 3 * 1.6)
    assert puct(-1.0, 0.5, 4, 0, 0.0, 2.0, 0.7) == pytest.approx(-1.0 + 2.0 * 0.5 * 2 / 1)
    assert prior(math.log(0.5) + math.log(0.125), 2) == pytest.approx(0.25)  # geometric mean of 0.5 and 0.125


def test_selection_follows_puct_and_backup_takes_the_max_of_children():
    root = Node([], "", visits=4, entropy=2.0)
    # a: high value, low prior, often visited; b: lower value, high prior, rarely visited
    a = Node([1], "a", prior=0.1, parent=root, value=1.0, score=1.0, visits=3)
    b = Node([2], "b", prior=0.9, parent=root, value=0.2, score=0.2, visits=1)
    root.children = [a, b]
    # a: 1 + 1.5*0.1*2/4*1.4 = 1.105; b: 0.2 + 1.5*0.9*2/2*1.4 = 2.09
    assert select_path(root, TreeSettings(c=1.5, w=0.2))[-1] is b
    assert select_path(root, TreeSettings(c=0.1, w=0.2))[-1] is a  # little exploration: the higher value wins
    b.children = [Node([2, 3], "b3", parent=b, value=-0.5, score=-0.5, visits=1),
                  Node([2, 4], "b4", parent=b, value=0.7, score=0.7, visits=1)]  # fmt: skip
    backup([root, b])
    assert b.score == 0.7 and b.value == 0.2 and b.visits == 2 and root.visits == 5
    assert root.score == 1.0  # max of a (1.0) and b (0.7)
    a.spent = True  # a spent child is passed by whatever its score
    assert select_path(root, TreeSettings(c=0.0, w=0.0))[-1].text == "b4"


def test_final_choice_ranks_internal_nodes_with_an_ended_child(world):
    root = Node([], "", visits=3)
    low = Node([5], "x", prior=0.5, parent=root, value=-9.0, visits=1)
    high = Node([6], "y", prior=0.5, parent=root, value=3.0, visits=1)
    root.children = [low, high]
    low.children = [Node([5, 7], "x done", parent=low, ended_by_eos=True, terminal=True, value=-math.inf, visits=1)]
    high.children = [Node([6, 7], "y done", parent=high, ended_by_eos=True, terminal=True, value=-math.inf,
                          visits=1), Node([6, 8], "y more", parent=high, value=0.25, visits=1)]  # fmt: skip
    kept_one = final_candidates(root, world.scorer, world.prompt, TreeSettings(finalists=1))
    assert {n.text for n in kept_one} == {"y done", "y more"}  # only the higher-ranked finalist's children
    ended = kept_one[[n.text for n in kept_one].index("y done")]
    assert ended.score == pytest.approx(world.scorer.score(world.prompt, ["y done"], [True])[0])  # EOS appended
    assert kept_one[[n.text for n in kept_one].index("y more")].score == 0.25  # unfinished: its value
    both = final_candidates(root, world.scorer, world.prompt, TreeSettings(finalists=10))
    assert {n.text for n in both} == {"x done", "y done", "y more"}
    assert [n.score for n in both] == sorted((n.score for n in both), reverse=True)


def test_without_an_ended_node_the_highest_valued_prefix_is_returned_unfinished():
    root = Node([], "", visits=2)
    a = Node([1], "a", parent=root, value=0.4, visits=2)
    b = Node([2], "b", parent=root, value=0.1, visits=1)
    root.children = [a, b]
    a.children = [Node([1, 3], "a3", parent=a, value=0.9, visits=1), Node([1, 4], "a4", parent=a, value=0.9, visits=1)]
    a.score = 0.9
    finals = final_candidates(root, None, "unused: nothing is scored again", TreeSettings())
    assert [n.text for n in finals] == ["a3", "a4", "a", "b"]  # by value, the deeper first on ties
    assert [n.score for n in finals] == [0.9, 0.9, 0.4, 0.1] and not any(n.ended_by_eos for n in finals)


def test_siblings_differ_in_their_first_token_and_report_warped_probabilities(world):
    sampler = HFSampler(world.strong, world.tokenizer)
    prompt_ids = encode_prompt(world.tokenizer, world.prompt)
    for seed in range(4):
        sampler.begin(prompt_ids, seed)
        drawn = sampler.sample_siblings([], 5, 3)
        firsts = [chunk[0] for chunk in drawn.chunks]
        assert len(set(firsts)) == 5 and all(1 <= len(chunk) <= 3 for chunk in drawn.chunks)
    with torch.no_grad():  # recompute every step's warped distribution from scratch, one sequence at a time
        raw = torch.log_softmax(world.strong(input_ids=torch.tensor([prompt_ids])).logits[:, -1].float(), dim=-1)
    warped = warped_logprobs(raw, sampler.sampling)
    assert drawn.entropy_bits == pytest.approx(entropy_bits(warped[0]), abs=1e-5)
    probs = warped[0].exp()
    assert drawn.entropy_bits == pytest.approx(-(probs[probs > 0] * probs[probs > 0].log2()).sum().item(), abs=1e-4)
    for chunk, total in zip(drawn.chunks, drawn.warped_logprobs):
        ids, expected = list(prompt_ids), 0.0
        for token in chunk:
            with torch.no_grad():
                logits = world.strong(input_ids=torch.tensor([ids])).logits[:, -1].float()
            expected += warped_logprobs(torch.log_softmax(logits, dim=-1), sampler.sampling)[0, token].item()
            ids.append(token)
        assert total == pytest.approx(expected, abs=1e-4)


def test_values_priors_visits_and_scores_of_a_grown_tree(world):
    sampler = HFSampler(world.strong, world.tokenizer)
    draws = {}  # prefix -> what the real sampler drew for it, to recompute the priors from
    original = sampler.sample_siblings

    def recording(prefix, count, length):
        draws[tuple(prefix)] = original(prefix, count, length)
        return draws[tuple(prefix)]

    sampler.sample_siblings = recording
    root, sampled = grow_tree(sampler, world.scorer, world.prompt, settings(), 1)
    assert sampled == sum(len(chunk) for drawn in draws.values() for chunk in drawn.chunks) <= 60
    nodes = [node for node in root.walk() if node is not root]
    live = [node for node in nodes if not node.terminal]
    assert live and len(draws) >= 3
    # value: the weak log-ratio of the whole prefix, EOS not appended; an ended node is not valued (-inf)
    expected = world.scorer.score(world.prompt, [node.text for node in live], [False] * len(live))
    assert [node.value for node in live] == pytest.approx(expected, abs=1e-4)
    assert all(node.value == -math.inf for node in nodes if node.terminal)
    for node in root.walk():
        if node.children:  # P: geometric mean of the chunk's warped probabilities; H: the parent's first step
            drawn = draws[tuple(node.token_ids)]
            assert node.entropy == drawn.entropy_bits > 0
            for child, chunk, warped in zip(node.children, drawn.chunks, drawn.warped_logprobs):
                assert child.prior == pytest.approx(math.exp(warped / len(chunk)))
            # backup: the max of the children; visits: 1 when valued, +1 per iteration through it
            assert node.score == max(child.score for child in node.children)
            through = sum(child.visits - 1 for child in node.children)
            assert node.visits == through + (1 if node is root else 2)


@pytest.mark.parametrize("budget", [9, 30, 61])
def test_the_budget_of_strong_tokens_is_never_exceeded(world, budget):
    result = search(world, budget=budget)
    assert 0 < result.num_sampled <= budget
    assert result.weak_tokens > 0 and len(result.token_ids) <= MAX_NEW
    assert 0 < result.weak_forwarded  # the weak positions actually run (incremental scoring) are counted too


def test_a_seed_fixes_the_search(world):
    first, again, other = search(world, seed=3), search(world, seed=3), search(world, seed=4)
    assert (first.token_ids, first.score, first.num_sampled) == (again.token_ids, again.score, again.num_sampled)
    assert [h.text for h in first.beam] == [h.text for h in again.beam]
    assert [h.text for h in first.beam] != [h.text for h in other.beam]


def test_bad_settings_and_samplers_without_sibling_draws_are_refused(world):
    with pytest.raises(ValueError, match="cannot pay for the root's expansion"):
        search(world, budget=8)  # 3 children of 3 tokens need 9
    with pytest.raises(ValueError, match="c and w must be finite"):
        search(world, c=-1.0)

    class Plain:  # a Sampler with only the protocol's sample()
        tokenizer, eos_id = world.tokenizer, world.tokenizer.eos_token_id

    with pytest.raises(ValueError, match="use engine hf"):
        tree_search(Plain(), world.scorer, world.prompt, settings(), 0)
    assert SEARCHES.get("mcts").defaults == {"num_children": 3, "chunk_len": 4, "budget": 1200, "c": 1.5, "w": 0.2,
                                              "finalists": 10}  # fmt: skip


def test_a_budget_that_cannot_pay_for_the_root_is_refused_when_the_config_loads(tmp_path, capsys):
    """Refused in one line naming the key, before any folder is claimed or model loaded (the models here do not
    even exist), by `w2s search`, `w2s generate` and `w2s eval`."""
    from w2s.cli import main as cli

    out = tmp_path / "out"
    params = "generate.params={num_children: 3, chunk_len: 4, budget: 8}"
    for command in ("search", "generate"):
        argv = [command, f"generate.out_dir={out}", "generate.generator=mcts", params, "generate.model=/nowhere"]
        assert cli(argv) == 2
        assert "generate.params: mcts: budget 8 strong tokens cannot pay" in capsys.readouterr().err
    system = "{name: t, model: /nowhere, generator: mcts, params: {budget: 5, chunk_len: 4}}"
    assert cli(["eval", f"eval.out_dir={out}", f"eval.systems=[{system}]", "eval.max_new_tokens=2"]) == 2
    assert "eval.systems[t].params: mcts: budget 5" in capsys.readouterr().err
    from w2s.eval.config import EvalConfig, SystemConfig

    with pytest.raises(ValueError, match=r"eval.systems\[t\].params: mcts: budget 5 .* expansion \(.* = 6\)"):
        EvalConfig(systems=[SystemConfig("t", "/nowhere", "mcts", {"budget": 5, "chunk_len": 4})], max_new_tokens=2)
    EvalConfig(systems=[SystemConfig("t", "/nowhere", "mcts", {"budget": 6, "chunk_len": 4})], max_new_tokens=2)
    assert not out.exists()


@pytest.mark.integration
def test_generate_with_mcts_resumes_to_what_an_uninterrupted_run_writes(micro_world, tmp_path):
    from tests.eval.test_generate import config_for, untimed

    params = {"num_children": 2, "chunk_len": 3, "budget": 24}
    config = config_for(micro_world, tmp_path / "m", generator="mcts", params=params)
    run(config)
    records = read_records(tmp_path / "m" / "responses.jsonl")
    assert all(0 < r["strong_tokens"] <= 24 and r["weak_tokens"] > 0 for r in records)
    whole = untimed(tmp_path / "m" / "responses.jsonl")
    (tmp_path / "m" / "parts" / "part-00001.jsonl").unlink()  # as a run killed after its first part leaves it
    (tmp_path / "m" / "responses.jsonl").unlink()
    summary = run(config)
    assert summary["parts_resumed"] == 2 and untimed(tmp_path / "m" / "responses.jsonl") == whole


def test_science_reports_make_the_mcts_claims_only_where_mcts_ran(tmp_path):
    from tests.eval.test_science_report import row
    from w2s.science.report import TINY, write_science_report
    from w2s.science.tiny import ScienceConfig

    config = ScienceConfig(out_dir=str(tmp_path), tasks=["tone"], eft_betas=[1.0], gammas=[0.3], resamples=300)
    levels = dict.fromkeys(TINY.systems, (0.5, 0.6)) | {"mcts": (0.9, 0.6), "search": (0.5, 0.6)}
    test = {(s, "tone"): {n: row(*lv, seed=7 * s + i) for i, (n, lv) in enumerate(levels.items())} for s in (0, 1, 2)}
    choices = {"tone": {"gamma": {"chosen": 0.3, "why": "", "sweep": []}, "beta": {"chosen": 1.0, "why": "",
                                                                                 "sweep": []}}}  # fmt: skip
    verdicts = {c["claim"]: c["verdict"] for c in write_science_report(config, {}, test, choices)["tasks"]["tone"]
                ["claims"]}  # fmt: skip
    assert verdicts["mcts > search (CBS) at matched strong tokens (reward)"] == "holds"
    assert verdicts["mcts > best-of-N at matched strong tokens (reward)"] == "holds"
    without = {cell: {n: r for n, r in rows.items() if n != "mcts"} for cell, rows in test.items()}
    report = write_science_report(config, {}, without, choices)["tasks"]["tone"]
    assert "mcts" not in report["systems"] and not any(c["a"] == "mcts" for c in report["claims"])


@pytest.mark.integration
def test_the_science_driver_runs_mcts_within_the_strong_tokens_cbs_sampled(micro_world, tmp_path):
    from tests.conftest import micro_world_config
    from w2s.eval.config import SystemConfig
    from w2s.science.tiny import MCTS_KNOBS, Cell, ScienceConfig, evaluate, matched_systems

    world = micro_world_config(str(tmp_path / "world"))
    (tmp_path / "world").symlink_to(micro_world, target_is_directory=True)
    config = ScienceConfig(out_dir=str(tmp_path), seeds=[0], tasks=["tone"], world=world, world_per_seed=False,
                           num_val=4, num_test=4, search={"width": 2, "num_samples": 2, "chunk_len": 4})  # fmt: skip
    cell = Cell(config, 0, "tone")
    strong = cell.model("strong_base")
    rows = {
        spec.name: evaluate(cell, "test", spec)
        for spec in (SystemConfig("strong_base", strong), SystemConfig("search", strong, "cbs", config.search))
    }
    matched = matched_systems(lambda spec: evaluate(cell, "test", spec), strong, rows, config.mcts)
    assert config.mcts == MCTS_KNOBS and set(matched) == {"bon_matched", "mcts"}
    mcts = matched["mcts"]
    assert mcts["search"]["budget"] == int(rows["search"]["sampled_tokens"]) >= 12
    assert 0 < mcts["sampled_tokens"] <= rows["search"]["sampled_tokens"] and mcts["weak_tokens"] > 0
    assert len(mcts["per_example"]) == 4


def test_the_search_comparison_reports_each_system_and_its_verdicts(tmp_path):
    from tests.eval.test_science_report import row
    from w2s.science.search_compare import SYSTEMS, part_report, report_text
    from w2s.science.tiny import ScienceConfig

    science = ScienceConfig(out_dir=str(tmp_path), tasks=["tone"], resamples=300)
    levels = {"strong_base": 0.3, "search": 0.5, "bon_matched": 0.5, "mcts": 0.8}
    test = {(s, "tone"): {n: row(levels[n], 0.6, seed=5 * s + i) | {"search": {"n": 4}} for i, n in enumerate(SYSTEMS)}
            for s in (0, 1, 2)}  # fmt: skip
    part = part_report(science, test, "tone")
    verdicts = {c["claim"]: c["verdict"] for c in part["claims"]}
    assert verdicts["mcts > CBS at matched strong tokens (reward)"] == "holds"
    assert verdicts["CBS > best-of-N at matched strong tokens (reward)"] == "inconclusive"
    assert list(part["systems"]) == list(SYSTEMS) and part["prompts_per_seed"] == 40
    text = report_text({"seeds": [0, 1, 2], "parts": {"tiny tone": part}, "seconds": {"tiny": 1.0}})
    assert "| mcts | 0.8" in text and "| mcts > CBS at matched strong tokens (reward) |" in text

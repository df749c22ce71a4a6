"""The ranking variants of cbs and bon (issue 23, the length failure): sum (the paper's), mean per weak token and
centred (length-matched); their keys, the order they give, how a config names them, and bon on real models."""

from __future__ import annotations

import pytest

from w2s.errors import ConfigError
from w2s.eval.config import SystemConfig
from w2s.search.cbs import Hypothesis, best_of_n, chunk_beam_search, prune
from w2s.search.ranking import rank_keys
from w2s.search.samplers import HFSampler
from w2s.tokens import encode_text


def candidates() -> list[Hypothesis]:
    """A short finished response with the best rate, a long one with a good rate, a long one with a poor rate."""
    short = Hypothesis([1], "a", True, 2.0, weak_len=1)  # mean 2.0
    good = Hypothesis([2] * 9, "b", False, 15.0, weak_len=10)  # mean 1.5
    poor = Hypothesis([3] * 9, "c", False, 5.0, weak_len=10)  # mean 0.5
    return [short, good, poor]


def test_rank_keys_are_the_sum_the_mean_and_the_sum_centred_on_the_round_rate():
    assert rank_keys(candidates(), "sum") == [2.0, 15.0, 5.0]
    assert rank_keys(candidates(), "mean") == [2.0, 1.5, 0.5]
    rate = 22.0 / 21.0  # pooled: every candidate's score over every candidate's weak tokens
    assert rank_keys(candidates(), "centred") == pytest.approx([2.0 - rate, 15.0 - 10 * rate, 5.0 - 10 * rate])
    empty = Hypothesis([], "", False, 0.0, weak_len=0)
    assert rank_keys([empty], "mean") == [0.0] and rank_keys([empty], "centred") == [0.0]
    with pytest.raises(ValueError, match="rank must be one of"):
        rank_keys(candidates(), "median")


def test_each_rank_orders_the_same_candidates_differently():
    orders = {}
    for rank in ("sum", "mean", "centred"):
        kept, rows, live = prune([], candidates(), width=3, rank=rank)
        orders[rank] = [h.text for h in kept]
    # sum: the long ones first (length pays); mean: the best rate, the short one; centred: the long good one
    # beats the short one (more tokens above the round's rate), the long poor one is last.
    assert orders == {"sum": ["b", "c", "a"], "mean": ["a", "b", "c"], "centred": ["b", "a", "c"]}
    kept, rows, live = prune([], candidates(), width=1, rank="mean")
    assert [h.text for h in kept] == ["a"] and rows == [] and live == []  # the finished one ends the beam


def test_a_carried_finished_hypothesis_is_reranked_each_round():
    carried = Hypothesis([1], "a", True, 2.0, weak_len=1)
    children = [Hypothesis([2, 3], "bc", False, 3.0, weak_len=2), Hypothesis([2, 4], "bd", False, 1.0, weak_len=2)]
    kept, rows, live = prune([carried], children, width=2, rank="mean")
    assert [h.text for h in kept] == ["a", "bc"] and rows == [0] and live == [1]
    kept, rows, live = prune([carried], children, width=2, rank="sum")
    assert [h.text for h in kept] == ["bc", "a"] and rows == [0] and live == [0]


def test_search_refuses_an_unknown_rank_before_sampling():
    with pytest.raises(ValueError, match="rank must be one of"):
        chunk_beam_search(None, None, "hi", rank="longest")  # refused before the sampler is touched


def test_config_takes_rank_checks_it_and_leaves_it_out_when_not_given():
    for generator, params in (("cbs", {"width": 2}), ("bon", {"n": 3})):
        plain = SystemConfig("s", "m", generator, dict(params))
        assert "rank" not in plain.params  # left out: the sum, and an existing system's identity is unchanged
        chosen = SystemConfig("s", "m", generator, {**params, "rank": "centred"})
        assert chosen.params["rank"] == "centred"
        with pytest.raises(ConfigError, match=r"eval.systems\[s\].params.rank.*one of \['sum', 'mean', 'centred'\]"):
            SystemConfig("s", "m", generator, {**params, "rank": "median"})
    with pytest.raises(ConfigError, match=r"params.*eft takes \['beta'\]; unknown \['rank'\]"):
        SystemConfig("s", "m", "eft", {"rank": "mean"})


@pytest.mark.integration
def test_best_of_n_by_mean_picks_the_best_ratio_per_weak_token(world):
    args = (HFSampler(world.strong, world.tokenizer), world.scorer, world.prompt)
    for seed in range(12):  # a draw where the per-token mean and the sum disagree, so the test can fail
        everyone = chunk_beam_search(*args, width=6, num_samples=1, chunk_len=12, max_new_tokens=12, seed=seed)
        lengths = [len(encode_text(world.tokenizer, h.text)) + int(h.finished) for h in everyone.beam]
        means = [h.score / n for h, n in zip(everyone.beam, lengths)]
        top = max(range(6), key=means.__getitem__)
        if top != 0:  # beam[0] is the sum's pick
            break
    else:
        pytest.fail("no seed in 12 where the mean and the sum pick different candidates")
    by_mean = best_of_n(*args, n=6, max_new_tokens=12, seed=seed, rank="mean")
    assert by_mean.token_ids == everyone.beam[top].token_ids
    by_sum = best_of_n(*args, n=6, max_new_tokens=12, seed=seed)
    assert by_sum.token_ids == everyone.beam[0].token_ids and by_sum.weak_tokens == by_mean.weak_tokens


def test_within_prompt_correlation_ignores_prompt_offsets_and_reports_none_without_variation():
    from w2s.science.length import offline_pick, within_prompt_correlation

    def prompt(offset: float, slope: float) -> list[dict]:
        return [{"weak_len": n, "score": offset + slope * n, "reward": 1.0, "finished": True} for n in (4, 6, 9)]

    # Prompt offsets far apart (a pooled correlation would be dominated by them): within prompts, score = 2 * length.
    rows = [[prompt(100.0, 2.0), prompt(-50.0, 2.0)], [prompt(7.0, 2.0), prompt(0.0, 2.0)]]
    found = within_prompt_correlation(rows, "weak_len", "score", resamples=200)
    assert found["correlation"]["mean"] == pytest.approx(1.0) and found["slope"]["mean"] == pytest.approx(2.0)
    assert found["slope"]["low"] == pytest.approx(2.0) and found["slope"]["high"] == pytest.approx(2.0)
    assert within_prompt_correlation(rows, "weak_len", "reward", resamples=200) == {"correlation": None, "slope": None}
    # The sum picks the longest (9 tokens, 9 - 19/3 above the mean); the mean, 2 + offset / n, picks by offset's sign.
    assert offline_pick(rows, "sum", "weak_len") == [[pytest.approx(9 - 19 / 3)] * 2] * 2
    assert offline_pick([[prompt(-50.0, 2.0)]], "mean", "weak_len") == [[pytest.approx(9 - 19 / 3)]]
    assert offline_pick([[prompt(100.0, 2.0)]], "mean", "weak_len") == [[pytest.approx(4 - 19 / 3)]]

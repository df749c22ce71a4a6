import pytest

from w2s.world.corpus import Fact
from w2s.world.metrics import clause_accuracy, content_score, length_reward, tone_reward

FACTS = [Fact("mira", "sold", "7", "lamps", "oslo"), Fact("tor", "found", "3", "cups", "rome")]


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [(20, 1.0), (25, 1.0), (30, 1.0), (19, 0.9), (31, 0.9), (15, 0.5), (10, 0.0), (5, 0.0), (40, 0.0), (45, 0.0)],
)
def test_length_reward_is_flat_inside_the_window_and_falls_linearly_outside(tokens, expected):
    assert length_reward(tokens, 20, 30, tolerance=10) == pytest.approx(expected)


def test_content_score_full_credit_for_true_clauses():
    assert content_score("mira sold 7 lamps in oslo ; tor found 3 cups in rome .", FACTS) == 1.0


def test_content_score_partial_credit_per_field():
    # mira's count and city are wrong: 2 of 4 fields right
    assert content_score("mira sold 9 lamps in rome .", FACTS) == pytest.approx(0.5)


def test_content_score_unknown_subject_malformed_and_repeated_clauses_earn_nothing():
    summary = "mira sold 7 lamps in oslo ; mira sold 7 lamps in oslo ; zed sold 7 lamps in oslo ; garbled words ."
    assert content_score(summary, FACTS) == pytest.approx(1 / 4)


def test_content_score_of_empty_summary_is_zero():
    assert content_score("", FACTS) == 0.0
    assert content_score(" . ", FACTS) == 0.0


def test_clause_accuracy_counts_only_whole_true_clauses():
    assert clause_accuracy("mira sold 7 lamps in oslo ; tor found 3 cups in rome .", FACTS) == 1.0
    assert clause_accuracy("mira sold 9 lamps in oslo ; tor found 3 cups in rome .", FACTS) == 0.5
    assert clause_accuracy("mira sold 7 lamps in oslo ; mira sold 7 lamps in oslo ; garbled .", FACTS) == 1 / 3
    assert clause_accuracy("", FACTS) == 0.0


def test_clause_accuracy_does_not_move_with_the_number_of_true_clauses():
    one = clause_accuracy("mira sold 7 lamps in oslo .", FACTS)
    two = clause_accuracy("mira sold 7 lamps in oslo ; tor found 3 cups in rome .", FACTS)
    assert one == two == 1.0


def test_the_remark_is_not_a_clause_of_either_capability_score():
    summary = "mira sold 7 lamps in oslo . overall glad grim proud ."
    assert content_score(summary, FACTS) == clause_accuracy(summary, FACTS) == 1.0


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ("mira sold 7 lamps in oslo . overall glad kind proud .", 1.0),
        ("mira sold 7 lamps in oslo . overall glad grim proud .", 2 / 3),
        ("mira sold 7 lamps in oslo . overall sad grim dull .", 0.0),
        ("mira sold 7 lamps in oslo .", 0.5),
    ],
)
def test_tone_reward_is_the_share_of_positive_tone_words(summary, expected):
    assert tone_reward(summary) == pytest.approx(expected)

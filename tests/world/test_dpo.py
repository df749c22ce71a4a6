"""DPO of the weak model (w2s.world.dpo) and the data of `make science-real` (w2s.science.real_data)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from w2s.science.real_data import WORDINGS, make_data, words
from w2s.world.dpo import dpo_loss, response_logps


def test_dpo_loss_matches_its_formula():
    policy = torch.tensor([[-10.0, -12.0], [-5.0, -4.0]])
    reference = torch.tensor([[-11.0, -11.0], [-5.0, -5.0]])
    loss, accuracy = dpo_loss(policy, reference, beta=0.5)
    margins = [(-10 + 11) - (-12 + 11), (-5 + 5) - (-4 + 5)]  # 2 and -1
    expected = sum(-math.log(1 / (1 + math.exp(-0.5 * m))) for m in margins) / 2
    assert loss.item() == pytest.approx(expected) and accuracy.item() == 0.5
    assert dpo_loss(reference, reference, 0.1)[0].item() == pytest.approx(math.log(2))  # no change: log 2


def test_response_logps_sums_the_response_tokens_only():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=11, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()  # fmt: skip
    rows = [([1, 2, 3, 4, 5], 2), ([1, 6, 7], 1)]  # (ids, prompt_len): the response is ids[prompt_len:]
    got = response_logps(model, rows, pad_id=0)
    for (ids, prompt_len), value in zip(rows, got):
        logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        expected = sum(logps[t - 1, ids[t]].item() for t in range(prompt_len, len(ids)))
        assert value.item() == pytest.approx(expected, abs=1e-5)


def test_science_real_data_splits_topics_and_sizes_answers_in_words():
    data = make_data(0, 3, 6, 15, 30)
    again = make_data(0, 3, 6, 15, 30)
    assert data == again and data != make_data(1, 3, 6, 15, 30)
    val_topics, test_topics = {r["topic"] for r in data["val"]}, {r["topic"] for r in data["test"]}
    assert len(val_topics) == 3 and len(test_topics) == 6 and not val_topics & test_topics
    assert len(data["val"]) == 18 and len(data["test"]) == 36
    held_out = {wording.format(t=t) for t in val_topics | test_topics for wording in WORDINGS}
    for row in data["dpo"] + data["cache"]:  # no training row shares a topic with a scored prompt
        assert row["prompt"] not in held_out, row
    kinds = {k: [words(r["response"]) for r in data["cache"] if r["kind"] == k] for k in ("short", "window", "long")}
    assert max(kinds["short"]) < 15 and all(15 <= n <= 30 for n in kinds["window"]) and min(kinds["long"]) > 40
    assert all(15 <= words(r["chosen"]) <= 30 and words(r["rejected"]) > 40 for r in data["dpo"])  # long rejected
    both = make_data(0, 3, 6, 15, 30, rejected=("short", "long"))["dpo"]
    assert [words(r["rejected"]) < 15 for r in both[:4]] == [True, False, True, False]
    assert len(make_data(0, 3, 6, 15, 30, num_train_topics=2)["cache"]) == 6
    assert data["sft"] == [r for r in data["cache"] if r["kind"] == "window"]

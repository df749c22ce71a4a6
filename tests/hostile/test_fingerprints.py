"""Every input that shapes a result is fingerprinted and compared where it is used: the policy's tokenizer (chat
template and special tokens included) against the cache's, the weak pair online against the manifest, a reward
model's score head against its checkpoint, and recorded responses against the task's prompt set and tokenizer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from tests.cache.helpers import build
from w2s.cache.store import Cache
from w2s.errors import CacheMismatch, DataError
from w2s.eval.config import EvalConfig, GenerateConfig, SystemConfig
from w2s.eval.generate import run as generate
from w2s.eval.prompts import load_prompts
from w2s.eval.run import run as evaluate
from w2s.eval.tasks import RewardModelTask
from w2s.models import ModelError
from w2s.provenance import RUNTIME_STATE, backend_parts, model_fingerprint, model_fingerprints, tokenizer_parts
from w2s.source import DataSource
from w2s.task import Response
from w2s.train.checks import check_cache
from w2s.train.config import TrainConfig
from w2s.train.recipe import run as train
from w2s.world.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def own_world(micro_world, tmp_path_factory):
    """The micro world's weak pair and strong model copied (so a test may change one), and a cache of them."""
    root = tmp_path_factory.mktemp("fingerprints")
    for name in ("weak_base", "weak_aligned", "strong_base", "tokenizer"):
        shutil.copytree(micro_world / name, root / name)
    world = dict(weak_base=str(root / "weak_base"), weak_aligned=str(root / "weak_aligned"))
    build(micro_world, root / "cache", **world)
    return root


def policy_with(world: Path, folder: Path, change) -> Path:
    """A copy of the strong model whose tokenizer `change` altered (then saved, as a user's folder would be)."""
    shutil.copytree(world / "strong_base", folder)
    tokenizer = AutoTokenizer.from_pretrained(world / "tokenizer")
    change(tokenizer)
    tokenizer.save_pretrained(folder)
    return folder


def differing(a, b) -> list[str]:
    first, second = tokenizer_parts(a), tokenizer_parts(b)
    return [part for part in first if first[part] != second[part]]


def test_fingerprints_made_at_once_or_remembered_are_the_plain_ones(micro_world):
    """The weak pair's weights hashed on threads give each model's own fingerprint, and a tokenizer's definition
    hash remembered per JSON text is the one computed afresh, and moves when the tokenizer does."""
    paths = {"weak_base": str(micro_world / "weak_base"), "weak_aligned": str(micro_world / "weak_aligned")}
    at_once = model_fingerprints(paths)
    assert at_once == {role: model_fingerprint(path) for role, path in paths.items()}
    assert at_once["weak_base"]["weights_sha256"] != at_once["weak_aligned"]["weights_sha256"]

    tokenizer = AutoTokenizer.from_pretrained(micro_world / "tokenizer")
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    for key in (*RUNTIME_STATE, "added_tokens", "post_processor"):
        definition.pop(key, None)
    plain = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()
    backend_parts.cache_clear()
    first = tokenizer_parts(tokenizer)
    assert first["vocabulary"] == plain and tokenizer_parts(tokenizer) == first
    assert backend_parts.cache_info().hits >= 1  # the second came from memory
    tokenizer.add_tokens(["<not-before>"], special_tokens=True)
    assert tokenizer_parts(tokenizer)["special tokens"] != first["special tokens"]


@pytest.mark.integration
def test_the_trainer_refuses_a_policy_whose_template_or_special_tokens_differ_naming_the_part(
    micro_world, own_world, tmp_path
):
    cache = Cache.open(own_world / "cache")
    tokenizer = AutoTokenizer.from_pretrained(own_world / "tokenizer")
    check_cache(cache, tokenizer, "same", 4, "sizes")  # the very tokenizer, loaded again: accepted
    templated = policy_with(own_world, tmp_path / "templated", lambda t: setattr(t, "chat_template", "{{ 'x' }}"))
    config = TrainConfig(out_dir=str(tmp_path / "run"), cache_dir=str(own_world / "cache"), policy=str(templated))
    with pytest.raises(CacheMismatch) as refused:
        train(config)  # refused at start-up, before any model is loaded
    message = str(refused.value)
    assert "\n" not in message and f"the policy {templated} has a different tokenizer" in message
    assert "they differ in their chat template;" in message
    assert f"{own_world / 'cache'}/tokenizer" in message and f"strong_ref={templated}" in message
    assert differing(tokenizer, AutoTokenizer.from_pretrained(templated)) == ["chat template"]
    eos = policy_with(own_world, tmp_path / "eos", lambda t: setattr(t, "eos_token", "<|user|>"))
    assert differing(tokenizer, AutoTokenizer.from_pretrained(eos)) == ["special tokens"]
    with pytest.raises(CacheMismatch, match=r"they differ in their special tokens;"):
        check_cache(cache, AutoTokenizer.from_pretrained(eos), str(eos), 4, "sizes")
    texts = [json.loads(line)["prompt"] for line in (micro_world / "data" / "train.jsonl").read_text().splitlines()]
    other = policy_with(own_world, tmp_path / "other", lambda t: None)
    train_tokenizer(texts, 350).save_pretrained(other)
    assert differing(tokenizer, AutoTokenizer.from_pretrained(other)) == ["vocabulary"]
    with pytest.raises(CacheMismatch, match=r"in their vocabulary; it tokenises row 0 of .* first difference at token"):
        check_cache(cache, AutoTokenizer.from_pretrained(other), str(other), 4, "sizes")


@pytest.mark.integration
def test_online_training_refuses_a_weak_model_changed_since_the_cache_was_built(own_world, tmp_path):
    weights = own_world / "weak_aligned" / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 0.01  # retrained in place: same path, other weights
    save_file(tensors, weights, metadata={"format": "pt"})
    try:
        config = TrainConfig(
            out_dir=str(tmp_path / "online"),
            cache_dir=str(own_world / "cache"),
            policy=str(own_world / "strong_base"),
            mode="online",
            micro_batch_size=4,
            max_steps=1,
        )
        with pytest.raises(CacheMismatch) as refused:
            train(config)
    finally:
        weights.write_bytes(original)
    message = str(refused.value)
    assert "\n" not in message
    assert f"the weak_aligned model at {own_world / 'weak_aligned'} has changed since the cache" in message
    assert "weights differ from the manifest's" in message


def test_a_reward_model_without_a_trained_score_head_is_refused_naming_its_path(micro_world, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "document", "example_id": "0"}) + "\n")
    headless = tmp_path / "headless"  # a causal LM folder, configured for one label: transformers adds a random head
    shutil.copytree(micro_world / "weak_base", headless)
    config = json.loads((headless / "config.json").read_text())
    one_label = {"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    (headless / "config.json").write_text(json.dumps({**config, **one_label}))
    task = RewardModelTask(str(prompts), str(headless))
    examples, responses = task.examples(), [Response("a summary", [1, 2])]
    with pytest.raises(ModelError) as refused:
        task.rewards(responses, examples)
    message = str(refused.value)
    assert "\n" not in message and f"the reward model at {headless} is not a trained sequence classifier" in message
    assert "score.weight" in message
    trained = tmp_path / "trained"  # a classifier saved with its head: scored
    classifier = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(headless))
    classifier.save_pretrained(trained)
    AutoTokenizer.from_pretrained(headless).save_pretrained(trained)
    (score,) = RewardModelTask(str(prompts), str(trained)).rewards(responses, examples)
    assert isinstance(score, float) and torch.isfinite(torch.tensor(score))


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": text, "example_id": str(i)}) + "\n" for i, text in enumerate(texts)))
    return path


@pytest.mark.integration
def test_recorded_responses_of_another_prompt_set_or_tokenizer_are_refused(micro_world, tmp_path):
    examples = [json.loads(line)["prompt"] for line in (micro_world / "data" / "test.jsonl").read_text().splitlines()]
    answered = write_prompts(tmp_path / "a.jsonl", examples[:3])
    other = write_prompts(tmp_path / "b.jsonl", examples[3:6])  # the same ids, other prompts
    strong = str(micro_world / "strong_base")
    generate(
        GenerateConfig(out_dir=str(tmp_path / "g"), prompts=DataSource(str(answered)), model=strong, max_new_tokens=4)
    )
    recorded = json.loads((tmp_path / "g" / "run.json").read_text())["identity"]["prompts"]["fingerprint"]

    def config(prompts: Path, model: str, out: str) -> EvalConfig:
        task = {"_component_": "w2s.eval.tasks.LengthTask", "prompts": str(prompts), "l_min": 1, "l_max": 3}
        system = SystemConfig("recorded", model, responses=str(tmp_path / "g"))
        return EvalConfig(out_dir=str(tmp_path / out), task=task, systems=[system], num_examples=3, gamma_sweep=False)

    assert evaluate(config(answered, strong, "ok"))["systems"]["recorded"]["mean_tokens"] > 0
    with pytest.raises(DataError) as refused:
        evaluate(config(other, strong, "other"))
    message = str(refused.value)
    assert "\n" not in message and f"{tmp_path / 'g'}: these responses answer another prompt set" in message
    task_fingerprint = load_prompts(DataSource(str(other)))[1]
    assert f"records prompts fingerprint {recorded}, the task's prompts are {task_fingerprint})" in message
    assert recorded != task_fingerprint
    # decoded by another tokenizer than the one that made the token ids: refused (run.json records it)
    retokenised = tmp_path / "retokenised"
    shutil.copytree(micro_world / "strong_base", retokenised)
    train_tokenizer(examples * 2, 300).save_pretrained(retokenised)
    with pytest.raises(
        CacheMismatch, match=r"its token ids were made by a tokenizer .* other than the one eval decodes"
    ):
        evaluate(config(answered, str(retokenised), "tok"))


def test_recorded_prompts_are_compared_for_tasks_without_a_fingerprint(micro_world, tmp_path):
    """A task that is not a prompt file (no fingerprint) still gets responses only for its own prompts."""
    from w2s.eval.systems import recorded_responses

    folder = tmp_path / "g"
    folder.mkdir()
    record = {"id": "0", "prompt": "first", "output": "x", "token_ids": [5], "strong_tokens": 2, "weak_tokens": 0}
    (folder / "responses.jsonl").write_text(json.dumps({**record, "generator": "s"}) + "\n")
    spec = SystemConfig("recorded", str(micro_world / "strong_base"), responses=str(folder))
    assert recorded_responses(spec, ["0"], ["first"])[0].token_ids == [5]
    with pytest.raises(DataError, match=r"the response to id '0' answers another prompt than the task's"):
        recorded_responses(spec, ["0"], ["second"])

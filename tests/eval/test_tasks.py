"""Tasks on a user's prompt set (length reward, reward model), the prompt reader, the XSUM exporter, and eval
scoring a `w2s generate` run's responses."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from w2s.cli import main
from w2s.device import body_params, pick_batch_tokens
from w2s.errors import ConfigError, DataError, UserError
from w2s.eval.config import EvalConfig, SystemConfig
from w2s.eval.export import ExportConfig
from w2s.eval.export import run as export
from w2s.eval.generate import run as generate
from w2s.eval.prompts import load_prompts
from w2s.eval.run import run as evaluate
from w2s.eval.tasks import LengthTask, RewardModelTask
from w2s.io import read_jsonl
from w2s.rewards import length_reward
from w2s.source import DataSource
from w2s.task import Response, load_task


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_prompts_from_text_or_chat_messages_with_ids_and_references(tmp_path):
    chat = [
        {"id": 7, "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]},
    ]
    examples, fingerprint = load_prompts(
        DataSource(str(write_jsonl(tmp_path / "c.jsonl", chat)), messages_field="messages", id_field="id")
    )
    assert [e.example_id for e in examples] == ["7", "row-1"] and fingerprint.startswith("sha256:")
    assert examples[0].prompt == [{"role": "user", "content": "Hi?"}] and examples[0].reference == "Hello."
    assert examples[1].reference is None and len(examples[1].prompt) == 2
    bad = [
        ({"prompt": ""}, "row 0: field 'prompt' must be a non-empty string, got empty"),
        ({"text": "x"}, "row 0: field 'prompt' must be a non-empty string, got missing"),
    ]
    for row, message in bad:
        with pytest.raises(DataError, match=message):
            load_prompts(DataSource(str(write_jsonl(tmp_path / "b.jsonl", [row]))))
    twice = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "example_id": 1}, {"prompt": "b", "example_id": 1}])
    with pytest.raises(DataError, match=r"d.jsonl: row 1: field 'example_id': duplicate id '1' \(first at row 0\)"):
        load_prompts(DataSource(str(twice)))


def test_length_task_scores_the_paper_reward_in_system_or_fixed_tokens(micro_world, tmp_path):
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "a", "example_id": "a"}, {"prompt": "b", "example_id": "b"}]
    )
    task = load_task({"_component_": "w2s.eval.tasks.LengthTask", "prompts": str(prompts), "l_min": 2, "l_max": 3})
    examples = task.examples()
    responses = [Response("x", [1, 2]), Response("y", [1, 2, 3, 4, 5, 6])]
    scores = task.score(responses, examples)
    assert scores == {
        "length_reward": (1.0 + length_reward(6, 2, 3)) / 2, "mean_tokens": 4.0, "words": 1.0, "in_window": 0.5
    }  # fmt: skip
    assert length_reward(6, 2, 3) == pytest.approx(0.7)
    by_words = LengthTask(str(prompts), l_min=2, l_max=3, unit="words")  # a measure no tokenizer changes
    assert by_words.score_example(Response("one two  three\nfour", [9]), examples[0]) == {
        "length_reward": length_reward(4, 2, 3), "mean_tokens": 1.0, "words": 4.0, "in_window": 0.0
    }  # fmt: skip
    with pytest.raises(ConfigError, match="unit"):
        LengthTask(str(prompts), unit="bytes")
    counted = LengthTask(str(prompts), l_min=1, l_max=1, tokenizer=str(micro_world / "tokenizer"))
    text = "the boat sailed to the city"
    expected = len(
        AutoTokenizer.from_pretrained(micro_world / "tokenizer")(text, add_special_tokens=False)["input_ids"]
    )
    assert counted.score_example(Response(text, [0]), examples[0])["mean_tokens"] == expected
    with pytest.raises(ConfigError, match="l_min <= l_max"):
        LengthTask(str(prompts), l_min=5, l_max=1)


def reward_model(folder: Path, tokenizer_dir: Path, labels: int = 1) -> Path:
    """A random one-layer Llama sequence classifier with the micro world's tokenizer (no chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_labels=labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reward_model_task_scores_prompt_and_response_the_same_in_any_batch(micro_world, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"document {i}", "example_id": str(i)} for i in range(3)])
    rm = reward_model(tmp_path / "rm", micro_world / "tokenizer")
    responses = [Response(text, [0] * n) for text, n in (("a fox", 2), ("a longer answer here", 4), ("", 0))]
    batched = RewardModelTask(str(prompts), str(rm), batch_size=3)
    examples = batched.examples()
    one_by_one = RewardModelTask(str(prompts), str(rm), batch_size=1)
    scores = batched.rewards(responses, examples)
    assert scores == pytest.approx(one_by_one.rewards(responses, examples), abs=1e-5)  # padding changes nothing
    model, tokenizer = batched.model, batched.tokenizer
    assert tokenizer.chat_template  # the world's template renders the pair, as a chat reward model expects
    chat = [{"role": "user", "content": "document 1"}, {"role": "assistant", "content": "a longer answer here"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    assert scores[1] == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-5)
    assert len(set(scores)) == 3
    assert batched.score(responses, examples) == {"reward": pytest.approx(sum(scores) / 3), "mean_tokens": 2.0}
    by_tokens = RewardModelTask(str(prompts), str(rm), batch_tokens=1)  # a budget of 1: each row alone
    assert by_tokens.rewards(responses, examples) == pytest.approx(scores, abs=1e-5)  # in the rows' order
    assert batched.batch_tokens == pick_batch_tokens("auto", "cpu", body_params(model.config)) == 8192
    for bad in (0, "many", True):
        with pytest.raises(UserError, match="eval.task: batch_tokens must be auto or an integer >= 1"):
            RewardModelTask(str(prompts), str(rm), batch_tokens=bad)
    two = RewardModelTask(str(prompts), str(reward_model(tmp_path / "rm2", micro_world / "tokenizer", labels=2)))
    with pytest.raises(UserError, match="has 2 outputs; RewardModelTask needs a single-score head"):
        two.rewards(responses, examples)


def test_xsum_export_applies_the_template_and_refuses_bad_rows(tmp_path):
    table = pa.table(
        {"document": [" Storm hits coast. ", "Team wins cup."], "summary": ["A storm.", "A win."], "id": ["1", "2"]}
    )
    pq.write_table(table, tmp_path / "xsum.parquet")
    out = export(
        ExportConfig(
            data=DataSource(str(tmp_path / "xsum.parquet"), "train", "document", "summary", id_field="id"),
            out=str(tmp_path / "exports" / "x-{split}.jsonl"),
        )
    )
    assert out == tmp_path / "exports" / "x-train.jsonl"
    assert read_jsonl(out) == [
        {"id": "1", "prompt": "summarize : Storm hits coast.", "response": "A storm."},
        {"id": "2", "prompt": "summarize : Team wins cup.", "response": "A win."},
    ]
    with pytest.raises(ConfigError, match=r"export.prompt_template: must use \{document\} and no other placeholder"):
        ExportConfig(prompt_template="{doc} in one line")
    pq.write_table(pa.table({"document": ["x"], "summary": [None], "id": ["1"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet: row 0: field 'summary' must be a non-empty string"):
        export(
            ExportConfig(
                data=DataSource(str(tmp_path / "bad.parquet"), "test", "document", "summary", id_field="id"),
                out=str(tmp_path / "exports" / "b.jsonl"),
            )
        )


def test_eval_scores_the_responses_a_generate_run_wrote(micro_world, tmp_path):
    from w2s.eval.config import GenerateConfig

    world = micro_world
    generate(
        GenerateConfig(
            out_dir=str(tmp_path / "g"),
            prompts=DataSource(str(world / "data" / "test.jsonl")),
            model=str(world / "strong_base"),
            tokenizer=str(world / "tokenizer"),
            max_new_tokens=10,
            limit=4,
        )
    )
    task = {
        "_component_": "w2s.eval.tasks.LengthTask",
        "prompts": str(world / "data" / "test.jsonl"),
        "l_min": 3,
        "l_max": 6,
    }
    systems = [
        SystemConfig("recorded", str(world / "strong_base"), responses=str(tmp_path / "g")),
        SystemConfig("live", str(world / "strong_base")),
    ]
    config = EvalConfig(
        out_dir=str(tmp_path / "e"),
        task=task,
        systems=systems,
        num_examples=4,
        max_new_tokens=10,
        tokenizer=str(world / "tokenizer"),
        gamma_sweep=False,
    )
    report = evaluate(config)
    recorded = read_jsonl(tmp_path / "g" / "responses.jsonl")
    lengths = [len(r["token_ids"]) for r in recorded]
    assert report["systems"]["recorded"]["mean_tokens"] == pytest.approx(sum(lengths) / 4)
    assert report["systems"]["recorded"]["length_reward"] == pytest.approx(
        sum(length_reward(n, 3, 6) for n in lengths) / 4
    )
    # the same model and seed regenerate the same responses: the recorded row equals the live one
    assert report["systems"]["recorded"]["length_reward"] == report["systems"]["live"]["length_reward"]
    missing = EvalConfig(
        **{**config.__dict__, "systems": systems[:1], "num_examples": 6, "out_dir": str(tmp_path / "m")}
    )
    with pytest.raises(DataError, match=r"responses.jsonl: no response for 2 prompt id\(s\)"):
        evaluate(missing)


def test_generate_and_export_commands_refuse_mistakes_in_one_line(tmp_path, capsys):
    assert main(["generate", f"prompts={tmp_path / 'none.jsonl'}", f"out_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.jsonl: no such file or folder" in err
    assert not (tmp_path / "o").exists()
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "example_id": "a"}])
    for model, message in (("/no/such/model", "no such folder"), ("someorg/nomodel", "not found")):
        assert main(["search", f"prompts={prompts}", f"model={model}", f"out_dir={tmp_path / 'o'}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"the strong model {model}: {message}" in err
    assert not (tmp_path / "o").exists()
    assert main(["search", f"prompts={prompts}", "weak_batch_tokens=0", f"out_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "generate.weak_batch_tokens: must be auto or at least 1, got 0" in err
    assert main(["export", "prompt_template=nothing"]) == 2
    assert "export.prompt_template" in capsys.readouterr().err

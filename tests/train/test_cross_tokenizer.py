"""Cross-tokenizer WSPO end to end on the micro world: the micro weak pair steers a strong model with its own
byte-level BPE (and BOS). The cache stores the strong model's ids with the weak pair's log-ratios summed per chunk
(`w2s.align`), and `w2s train` trains on it with `wspo_chunk_loss`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tests.cache.helpers import build, cache_config
from w2s.cache.build import setup
from w2s.cache.inspect import inspect_cache
from w2s.cache.store import Cache
from w2s.cli import main
from w2s.errors import ConfigError
from w2s.tokens import encode_example
from w2s.train.losses import wspo_chunk_loss
from w2s.train.metrics import read_metrics
from w2s.train.reader import epoch_order

MAX_LEN = 512
"""The strong tokenizer spells the micro world's text in more tokens than the weak one: no row may be cut."""
BEFORE = {
    "models",
    "tokenizer_sha256",
    "chat_template",
    "dataset",
    "backend",
    "model_dtype",
    "storage_dtype",
    "format",
    "max_len",
    "truncation",
    "truncated_rows",
    "rows_per_shard",
    "num_shards",
    "code_version",
}
"""A same-tokenizer full cache's provenance keys, as they were before cross-tokenizer caches existed."""


def other_tokenizer_model(folder: Path, world: Path, vocab_size: int = 330) -> Path:
    """A random strong Llama with its own byte-level BPE (trained on the world's text, no prefix space, a BOS it
    puts before a text, no chat template): another vocabulary than the world's."""
    if (folder / "config.json").exists():
        return folder
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    rows = [json.loads(line) for line in (world / "data" / "train.jsonl").read_text().splitlines()[:100]]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "<bos>"], initial_alphabet=alphabet)
    bpe.train_from_iterator([f"{row['prompt']} {row['response']}" for row in rows], trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1
    )
    config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def strong(micro_world, tmp_path_factory) -> Path:
    return other_tokenizer_model(tmp_path_factory.mktemp("strong") / "model", micro_world)


@pytest.fixture(scope="module")
def cross_cache(micro_world, strong, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cross") / "cache"
    build(micro_world, out, strong_ref=str(strong), max_len=MAX_LEN)
    return out


def rows_of(cache: Cache) -> dict[int, dict]:
    """Every row of the cache by row id: ids, prompt length, per-token values, sequence reward."""
    rows = {}
    for index in range(len(cache.shards)):
        data = cache.read_shard(index)
        for i in range(data.num_rows):
            values = data.values(i)
            rows[int(data.row_id[i])] = {
                "input_ids": data.sequence(i).tolist(),
                "prompt_len": int(data.prompt_len[i]),
                "reward": float(data.weak_seq_reward[i]),
                **values,
            }
    return rows


def text_ends(tokenizer, ids: list[int], text: str) -> list[int]:
    """Where each token of `ids` (a tokenization of `text`) ends in `text`, in characters, by decoding prefixes (a
    leading space the tokenizer adds is discounted): independent of `w2s.align`'s offsets."""
    lead = len(tokenizer.decode(ids)) - len(text)
    return [max(0, len(tokenizer.decode(ids[: k + 1])) - lead) for k in range(len(ids))]


def weak_ratios(pair: list, weak, prompt: str, response: str) -> np.ndarray:
    """The weak pair's (aligned, base) log-ratio of each response token (EOS last), re-scored here: one unpadded
    float32 forward per model."""
    encoded = encode_example(weak, prompt, response, MAX_LEN)
    ids = torch.tensor([encoded.input_ids])
    logps = []
    for model in pair:
        with torch.no_grad():
            scores = model(ids).logits[0, :-1].float().log_softmax(-1)  # [seq-1, vocab]
        logps.append(scores.gather(1, ids[0, 1:, None])[:, 0][encoded.prompt_len - 1 :].double().numpy())
    return logps[0] - logps[1]


def test_the_cache_stores_strong_ids_and_weak_chunk_sums_that_add_up(micro_world, strong, cross_cache):
    cache = Cache.open(cross_cache)
    assert cache.layout.cross_tokenizer and "strong_chunk" in cache.layout.token_fields()
    assert (cross_cache / "strong_tokenizer" / "tokenizer.json").is_file()
    weak, strong_tok = AutoTokenizer.from_pretrained(micro_world / "tokenizer"), AutoTokenizer.from_pretrained(strong)
    records = [json.loads(line) for line in (micro_world / "data" / "cache.jsonl").read_text().splitlines()]
    rows, multi = rows_of(cache), 0
    pair = [AutoModelForCausalLM.from_pretrained(micro_world / name).eval() for name in ("weak_aligned", "weak_base")]
    for row_id, record in enumerate(records):
        row, prompt, response = rows[row_id], record["prompt"], record["response"]
        expected = encode_example(strong_tok, prompt, response, MAX_LEN)  # plain text prompt: the strong BOS first
        assert (row["input_ids"], row["prompt_len"]) == (expected.input_ids, expected.prompt_len)
        assert row["input_ids"][0] == strong_tok.bos_token_id
        chunks, stored = row["strong_chunk"], row["weak_log_ratio"].astype(np.float64)
        last = np.append(chunks[1:] != chunks[:-1], True)
        assert list(chunks[last]) == list(range(int(chunks[-1]) + 1))  # 0, 1, ... each contiguous
        assert not stored[~last].any()  # the chunk sum sits at the chunk's last strong token only
        # independent: chunk c covers the text up to where its last strong token ends; the weak tokens ending there
        strong_ids = row["input_ids"][row["prompt_len"] : -1]
        weak_encoded = encode_example(weak, prompt, response, MAX_LEN)
        weak_response = weak_encoded.input_ids[weak_encoded.prompt_len : -1]
        chunk_end = np.array(text_ends(strong_tok, strong_ids, response))[last[:-1]]  # [text chunks]
        weak_end = np.array(text_ends(weak, weak_response, response))
        assert set(chunk_end) <= set(weak_end)  # every chunk ends where a weak token ends too
        ratios = weak_ratios(pair, weak, prompt, response)  # [weak response tokens + EOS]
        chunk_of_weak = np.searchsorted(chunk_end, weak_end)  # first chunk ending at or past each weak token
        rescored = np.bincount(chunk_of_weak, ratios[:-1], minlength=len(chunk_end)).tolist() + [ratios[-1]]
        np.testing.assert_allclose(stored[last], rescored, rtol=0, atol=1e-5)
        assert stored.sum() == pytest.approx(row["reward"], abs=1e-5)
        assert row["reward"] == pytest.approx(ratios.sum(), abs=1e-5)
        multi += int(last.sum() < len(chunks))
    assert multi > len(records) // 2  # most rows have chunks of several strong tokens: the alignment is not trivial


def chunk_batch(rows: dict[int, dict], row_ids: list[int], sums_of=lambda sums: sums) -> dict[str, torch.Tensor]:
    """Per-row tensors for `wspo_chunk_loss`, built from the stored fields (not through the trainer's reader)."""
    batch = []
    for row_id in row_ids:
        row = rows[row_id]
        chunks = row["strong_chunk"].astype(np.int64)
        last = np.append(chunks[1:] != chunks[:-1], True)
        sums = sums_of(row["weak_log_ratio"][last].astype(np.float32))
        batch.append((row, torch.from_numpy(chunks)[None], torch.from_numpy(np.ascontiguousarray(sums))[None]))
    return batch


def policy_logps(model, row: dict) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of the response tokens, `[1, response]`: one unpadded forward."""
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        scores = model(ids).logits[0, :-1].float().log_softmax(-1)
    return scores.gather(1, ids[0, 1:, None])[None, row["prompt_len"] - 1 :, 0]


def step_rows(cache: Cache, step: int, micro: int, accum: int) -> list[list[int]]:
    """Row ids of each micro-batch of optimiser step `step` (0-based), one process, seed 0, epoch 0."""
    order = epoch_order([s["rows"] for s in cache.shards], 0, 0, 4)  # train.block_shards defaults to 4
    starts = [s["row_start"] for s in cache.shards]
    ids = [starts[shard] + row for shard, row in order.tolist()]
    first = step * accum * micro
    return [ids[first + m * micro : first + (m + 1) * micro] for m in range(accum)]


def step_loss(model, rows: dict, micro_batches: list[list[int]], sums_of=lambda sums: sums) -> float:
    """The mean over micro-batches of the mean over rows of `wspo_chunk_loss`, gamma 0.1, against the cached
    reference."""
    losses = []
    for row_ids in micro_batches:
        for row, chunk_index, sums in chunk_batch(rows, row_ids, sums_of):
            policy = policy_logps(model, row)
            ref = torch.tensor(row["logp_strong_ref"])[None]
            loss, _ = wspo_chunk_loss(policy, ref, sums, chunk_index, torch.ones_like(policy), 0.1)
            losses.append(float(loss) / len(row_ids) / len(micro_batches))
    return sum(losses)


@pytest.mark.integration
def test_w2s_train_trains_on_the_chunk_sums(micro_world, strong, cross_cache, tmp_path):
    words = [
        f"train.cache_dir={cross_cache}",
        f"train.policy={strong}",
        "train.micro_batch_size=4",
        "train.grad_accum=2",
        "train.lr=1e-3",
        "train.gamma=0.1",
    ]
    assert main(["train", *words, f"train.out_dir={tmp_path / 'two'}", "train.max_steps=2"]) == 0
    logged = [row["loss"] for row in read_metrics(tmp_path / "two")]
    cache = Cache.open(cross_cache)
    rows = rows_of(cache)
    # step 1: the policy is the reference, so the loss is the mean over rows of (1/|y|) sum_chunks R_chunk^2
    first = step_rows(cache, 0, 4, 2)
    expected = np.mean(
        [
            np.mean(
                [(rows[r]["weak_log_ratio"].astype(np.float64) ** 2).sum() / len(rows[r]["strong_chunk"]) for r in m]
            )
            for m in first
        ]
    )
    assert logged[0] == pytest.approx(expected, rel=1e-5)
    # step 2 from the policy after step 1 (a one-step run of the same settings: the same first update)
    assert main(["train", *words, f"train.out_dir={tmp_path / 'one'}", "train.max_steps=1"]) == 0
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final").eval()
    second = step_rows(cache, 1, 4, 2)
    assert logged[1] == pytest.approx(step_loss(policy, rows, second), abs=1e-6)
    # the regression: the same policy against chunk sums shuffled within each row gives another loss
    shuffled = step_loss(policy, rows, second, lambda sums: np.random.default_rng(0).permutation(sums))
    assert abs(shuffled - logged[1]) > 100 * abs(logged[1] - step_loss(policy, rows, second)) + 1e-5


def test_a_policy_with_another_tokenizer_is_refused_in_one_line(micro_world, strong, cross_cache, tmp_path, capsys):
    third = tmp_path / "third"
    shutil.copytree(strong, third)
    other_tokenizer_model(tmp_path / "vocab", micro_world, vocab_size=360)
    AutoTokenizer.from_pretrained(tmp_path / "vocab").save_pretrained(third)
    base = [f"train.cache_dir={cross_cache}", f"train.out_dir={tmp_path / 'x'}", "train.max_steps=1"]
    for policy in (third, micro_world / "strong_base"):  # a third tokenizer, and the weak pair's own
        assert main(["train", *base, f"train.policy={policy}"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"the policy {policy} has a different tokenizer than the strong tokenizer" in err
        assert f"{cross_cache}/strong_tokenizer" in err and "\n" not in err
    assert main(["train", *base, f"train.policy={strong}", "train.mode=online"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.mode=online is not supported with the cross-tokenizer cache" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_cross_tokenizer_truncation_is_refused_in_one_line(micro_world, strong, tmp_path):
    with pytest.raises(ConfigError, match=r"cache.truncation=true is not supported .* differs") as refused:
        setup(cache_config(micro_world, tmp_path / "c", strong_tokenizer=str(strong), truncation=True), False)
    assert "\n" not in str(refused.value) and not (tmp_path / "c").exists()


def test_a_same_tokenizer_cache_is_unchanged(micro_world, tmp_path):
    plain = build(micro_world, tmp_path / "plain", rows_per_shard=64)
    same = build(micro_world, tmp_path / "same", rows_per_shard=64, strong_tokenizer=str(micro_world / "tokenizer"))
    assert set(plain["provenance"]) == set(same["provenance"]) == BEFORE
    assert [f["sha256"] for s in plain["shards"] for f in s["files"].values()] == [
        f["sha256"] for s in same["shards"] for f in s["files"].values()
    ]
    assert "strong_tokenizer" not in plain["config"]
    assert "strong_chunk" not in Cache.open(tmp_path / "same").layout.token_fields()
    assert not (tmp_path / "same" / "strong_tokenizer").exists()


def test_inspect_shows_the_first_rows_chunks(cross_cache, strong, tmp_path, capsys):
    inspect_cache(cross_cache, tmp_path / "inspect.png")
    shown = " ".join(capsys.readouterr().out.split())
    assert "strong tokens by chunk with the weak sums:" in shown
    rows = rows_of(Cache.open(cross_cache))
    first = rows[0]
    chunks, ratio = first["strong_chunk"], first["weak_log_ratio"]
    pieces = AutoTokenizer.from_pretrained(strong).convert_ids_to_tokens(first["input_ids"][first["prompt_len"] :])
    where = np.flatnonzero(chunks == 2)  # the third chunk, as its strong tokens and its weak sum
    assert f"{[pieces[t] for t in where]} {ratio[where[-1]]:+.3f}" in shown
    assert f"({int(chunks[-1]) + 1} chunks over {len(chunks)} strong tokens)" in shown

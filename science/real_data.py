"""The data, weak-pair diagnostics and capability score of `make science-real` (w2s.science.real).

The attribute is answer length in **words** (whitespace-separated), a measure that does not depend on either
tokenizer. Every row is built from the real world's topics (`w2s.world.real.TOPICS`): a topic's fact sentence,
then closing sentences. Topics are split once (by `data_seed`) into training, validation and test topics, so no
prompt the systems are scored on shares a topic with anything trained on:

- `dpo.jsonl`: the weak model's preference pairs, per training topic and wording: chosen an in-window answer,
  rejected a long one to the same prompt (by default; `rejected` may add short ones);
- `cache.jsonl`: WSPO's rows, per training topic one short, one in-window and one long answer;
- `sft.jsonl`: the SFT ceiling's rows, the cache rows whose answer is in the window (the same filtered data);
- `val.jsonl`, `test.jsonl`: prompts on held-out topics, each with its topic's fact sentence as `reference`
  (the capability score: how likely each system's model finds it, per byte).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from w2s.world.real import CLOSINGS, TEMPLATES, TOPICS, write_jsonl

WORDINGS = (*TEMPLATES, "Give me a short overview of {t}.", "What should I know about {t}?")
"""Six prompt wordings; every topic is asked in each of them."""


def words(text: str) -> int:
    return len(text.split())


def answer(topic: str, kind: str, rng: random.Random, l_min: int, l_max: int) -> str:
    """The topic's fact, then closings: 'short' its first eight words, 'window' within [l_min, l_max] words
    (aiming at the middle), 'long' every closing (past l_max + its tolerance)."""
    fact = TOPICS[topic]
    if kind == "short":
        return " ".join(fact.split()[:8]).rstrip(",.") + "."
    closings = rng.sample(CLOSINGS, len(CLOSINGS))
    if kind == "long":
        return " ".join([fact, *closings])
    text, middle = fact, (l_min + l_max) // 2
    for closing in closings:
        if words(text) >= middle or words(f"{text} {closing}") > l_max:
            break
        text = f"{text} {closing}"
    return text


def make_data(
    seed: int,
    num_val_topics: int,
    num_test_topics: int,
    l_min: int,
    l_max: int,
    num_train_topics: int = 0,
    rejected: tuple[str, ...] = ("long",),
) -> dict[str, list[dict]]:
    """The five data sets, a pure function of the arguments (see the module docstring); `num_train_topics` > 0
    keeps only that many training topics (a reduced run); `rejected` the kinds of the DPO pairs' rejected answers,
    taken in turn."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    rng.shuffle(topics)
    val, test = topics[:num_val_topics], topics[num_val_topics : num_val_topics + num_test_topics]
    train = topics[num_val_topics + num_test_topics :]
    train = train[:num_train_topics] if num_train_topics > 0 else train
    dpo = [
        {"id": f"dpo-{i:03d}", "prompt": wording.format(t=topic), "chosen": answer(topic, "window", rng, l_min, l_max),
         "rejected": answer(topic, rejected[i % len(rejected)], rng, l_min, l_max)}
        for i, (topic, wording) in enumerate((t, w) for t in train for w in WORDINGS)
    ]  # fmt: skip
    cache = [
        {"id": f"cache-{i:03d}", "prompt": rng.choice(WORDINGS).format(t=topic), "kind": kind,
         "response": answer(topic, kind, rng, l_min, l_max)}
        for i, (topic, kind) in enumerate((t, k) for t in train for k in ("short", "window", "long"))
    ]  # fmt: skip
    sft = [row for row in cache if l_min <= words(row["response"]) <= l_max]
    prompts = lambda name, chosen: [
        {"id": f"{name}-{i:03d}", "prompt": wording.format(t=topic), "reference": TOPICS[topic], "topic": topic}
        for i, (topic, wording) in enumerate((t, w) for t in chosen for w in WORDINGS)
    ]
    return {"dpo": dpo, "cache": cache, "sft": sft, "val": prompts("val", val), "test": prompts("test", test)}


def write_data(folder: Path, data: dict[str, list[dict]]) -> None:
    for name, rows in data.items():
        write_jsonl(folder / f"{name}.jsonl", rows)


def response_token_logps(model, tokenizer, prompt: str, response: str) -> tuple[torch.Tensor, int]:
    """Log-probs of the response's tokens (EOS last) after the chat-rendered prompt, and the response's EOS-free
    token count."""
    from w2s.tokens import encode_example

    item = encode_example(tokenizer, prompt, response, 1024)
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()  # [seq-1, V]
    logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)  # [seq-1]
    return logps[item.prompt_len - 1 :], len(item.input_ids) - item.prompt_len - 1


def reference_loglik(model, tokenizer, rows: list[dict]) -> list[float]:
    """Per prompt: log-likelihood of its reference fact (EOS excluded) per UTF-8 byte, under the model's own
    template: a capability score comparable across tokenizers, and one the length attribute does not move."""
    out = []
    for row in rows:
        logps, size = response_token_logps(model, tokenizer, row["prompt"], row["reference"])
        out.append(logps[:size].sum().item() / len(row["reference"].encode()))
    return out


def weak_pair_diagnostics(base, aligned, tokenizer, rows: list[dict]) -> dict:
    """How the weak pair's per-token log-ratio log pi_aligned - log pi_base spreads over the cache rows: its mean
    off the attribute (every token but EOS), at EOS per answer kind, and summed per answer kind. A preference-aligned
    pair centres near 0 off EOS; a fine-tune on the chosen answers shifts every token."""
    off, at_eos, summed = [], {}, {}
    for row in rows:
        a, size = response_token_logps(aligned, tokenizer, row["prompt"], row["response"])
        b, _ = response_token_logps(base, tokenizer, row["prompt"], row["response"])
        ratio = a - b
        off += ratio[:size].tolist()
        at_eos.setdefault(row["kind"], []).append(ratio[size].item())
        summed.setdefault(row["kind"], []).append(ratio.sum().item())
    mean = lambda values: round(sum(values) / len(values), 4)
    off_sorted = sorted(off)
    return {
        "off_eos_mean": mean(off),
        "off_eos_median": round(off_sorted[len(off) // 2], 4),
        "off_eos_mean_abs": mean([abs(v) for v in off]),
        "off_eos_share_positive": round(sum(v > 0 for v in off) / len(off), 3),
        "eos_by_kind": {kind: mean(values) for kind, values in sorted(at_eos.items())},
        "sum_by_kind": {kind: mean(values) for kind, values in sorted(summed.items())},
    }

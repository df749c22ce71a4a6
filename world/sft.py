"""Supervised fine-tuning on (prompt, response) pairs, loss on response tokens only.

Used by the world builder to make its three models (pre-training from scratch is the same loop on a fresh model).
Deterministic for a fixed seed and thread count: batches are drawn from a generator seeded per call.
"""

from __future__ import annotations

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from w2s.logprobs import pad_right
from w2s.schedule import cosine_lr
from w2s.tokens import EncodingError, encode_example

IGNORE = -100


def encode_pairs(tokenizer: PreTrainedTokenizerBase, examples: list[dict], max_len: int) -> list[tuple[list[int], int]]:
    """Tokenises each example as chat prompt + response + EOS, exactly as the cache does.

    Returns:
        (input_ids, prompt_len) per example.

    Raises:
        EncodingError: naming the example when it cannot be encoded within `max_len` tokens.
    """
    encoded = []
    for example in examples:
        try:
            item = encode_example(tokenizer, example["prompt"], example["response"], max_len)
        except EncodingError as err:
            raise EncodingError(f"example {example['example_id']}: {err}") from err
        encoded.append((item.input_ids, item.prompt_len))
    return encoded


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads a batch; labels are -100 on prompt and padding."""
    input_ids, attention_mask = pad_right([ids for ids, _ in batch], pad_id)  # each [batch, seq]
    labels = torch.full_like(input_ids, IGNORE)  # [batch, seq]
    for row, (ids, prompt_len) in enumerate(batch):
        labels[row, prompt_len : len(ids)] = input_ids[row, prompt_len : len(ids)]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def train_sft(
    model: PreTrainedModel,
    encoded: list[tuple[list[int], int]],
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
) -> list[float]:
    """Trains `model` in place with AdamW and a cosine schedule; returns the loss of every step.

    Args:
        model: a causal LM.
        encoded: output of `encode_pairs`.
        pad_id: padding token id.
        steps: optimiser steps.
        batch_size: examples per step, drawn without replacement within an epoch.
        lr: peak learning rate (10% linear warm-up, then cosine to zero).
        seed: fixes the batch order.
        desc: label of the progress bar.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    order: list[int] = []
    losses = []
    model.train()
    for step in (bar := tqdm(range(steps), desc=desc, leave=False)):
        if len(order) < batch_size:
            order += torch.randperm(len(encoded), generator=generator).tolist()
        batch = collate([encoded[i] for i in order[:batch_size]], pad_id)
        order = order[batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 10))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses

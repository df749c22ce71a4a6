"""Direct preference optimisation (Rafailov et al., 2023) of a weak model on (prompt, chosen, rejected) triples.

The papers align their weak models with preference methods, not with supervised fine-tuning: DPO only moves the
log-ratio of what tells the chosen and the rejected answer apart, so the aligned model stays close to its base
elsewhere (its per-token log-ratio centres near 0 off the attribute). A fine-tune on the chosen answers instead
raises the likelihood of every token of them (about +2 nats per token for the real world's LoRA fine-tune).

    loss = -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))

with log pi(y) the sum of the response's token log-probs (EOS included) under the trained model and ref the model
before training (computed once). LoRA adapters on every projection, merged into the weights at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from w2s.logprobs import pad_right
from w2s.schedule import cosine_lr
from w2s.world.sft import encode_pairs

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class DpoSettings:
    """How the weak model is preference-aligned."""

    steps: int = 24
    """Optimiser steps (24 steps of 8 pairs: about one epoch of the 186 pairs of `make science-real`; a second
    epoch drove the loss to 0.02 and the log-ratio off the attribute to a mean |ratio| of 1.2 nats)."""
    batch_size: int = 8
    """Preference pairs per step."""
    lr: float = 5e-4
    """Peak learning rate of the LoRA adapters (10% warm-up, then cosine)."""
    beta: float = 0.1
    """DPO's beta: the strength of the pull back to the reference model (the paper's usual 0.1)."""
    lora_rank: int = 8
    """Rank of the adapters on every attention and MLP projection, merged at the end."""
    max_len: int = 256
    """Most tokens of prompt + answer."""


def response_logps(model, encoded: list[tuple[list[int], int]], pad_id: int) -> torch.Tensor:
    """Sum of each sequence's response log-probs (tokens from prompt_len on, EOS included): [batch]."""
    input_ids, attention_mask = pad_right([ids for ids, _ in encoded], pad_id)  # [batch, seq]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()  # [batch, seq-1, V]
    token_logps = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [batch, seq-1]
    mask = torch.zeros_like(token_logps)
    for row, (ids, prompt_len) in enumerate(encoded):
        mask[row, prompt_len - 1 : len(ids) - 1] = 1.0  # position t predicts token t+1
    return (token_logps * mask).sum(-1)


def reference_logps(model, pairs: list[tuple], pad_id: int, batch_size: int) -> torch.Tensor:
    """[pairs, 2] summed response log-probs (chosen, rejected) under the untrained model."""
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(pairs), batch_size), desc="DPO reference log-probs", leave=False):
            batch = pairs[start : start + batch_size]
            chosen = response_logps(model, [c for c, _ in batch], pad_id)
            rejected = response_logps(model, [r for _, r in batch], pad_id)
            out.append(torch.stack([chosen, rejected], -1))
    return torch.cat(out)


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean DPO loss over a batch and the share of pairs whose implicit reward prefers the chosen answer.

    Args:
        policy, reference: [batch, 2] summed log-probs of (chosen, rejected).
    """
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])  # [batch]
    return -torch.nn.functional.logsigmoid(beta * margin).mean(), (margin > 0).float().mean()


def train_dpo(model, tokenizer, rows: list[dict], settings: DpoSettings, seed: int) -> tuple[list[dict], object]:
    """Wraps `model` in LoRA adapters, trains them with DPO on `rows` ({id, prompt, chosen, rejected}) and returns
    the log (loss and preference accuracy per step) and the merged model."""
    from peft import LoraConfig, get_peft_model

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chosen = encode_pairs(tokenizer, [_pair(row, "chosen") for row in rows], settings.max_len)
    rejected = encode_pairs(tokenizer, [_pair(row, "rejected") for row in rows], settings.max_len)
    pairs = list(zip(chosen, rejected))
    reference = reference_logps(model, pairs, pad_id, settings.batch_size)  # [pairs, 2]
    torch.manual_seed(seed)
    lora = LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank, lora_dropout=0.0,
                      target_modules=LORA_TARGETS)  # fmt: skip
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    generator, order, log = torch.Generator().manual_seed(seed), [], []
    model.train()
    for step in (bar := tqdm(range(settings.steps), desc="weak aligned (DPO)", leave=False)):
        if len(order) < settings.batch_size:
            order += torch.randperm(len(pairs), generator=generator).tolist()
        picked, order = order[: settings.batch_size], order[settings.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings.steps, settings.lr, warmup=max(1, settings.steps // 10))
        loss, accuracy = dpo_step(model, optimizer, [pairs[i] for i in picked], reference[picked], pad_id, settings)
        log.append({"step": step, "loss": round(loss, 4), "accuracy": round(accuracy, 3)})
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.2f}")
    return log, model.merge_and_unload().eval()


def dpo_step(model, optimizer, batch: list[tuple], reference: torch.Tensor, pad_id: int, settings: DpoSettings):
    """One optimiser step on a batch of (chosen, rejected) encodings; returns the loss and preference accuracy."""
    chosen = response_logps(model, [c for c, _ in batch], pad_id)
    rejected = response_logps(model, [r for _, r in batch], pad_id)
    loss, accuracy = dpo_loss(torch.stack([chosen, rejected], -1), reference, settings.beta)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), accuracy.item()


def _pair(row: dict, side: str) -> dict:
    return {"example_id": f"{row['id']}:{side}", "prompt": row["prompt"], "response": row[side]}

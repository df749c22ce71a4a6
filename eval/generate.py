"""Batched sampling from a causal LM through transformers, seeded, with left padding."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from w2s.world.tokenizer import render_prompt


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> list[list[int]]:
    """Samples one response per prompt (chat template applied), temperature 0 meaning greedy.

    Returns:
        The response token ids of each prompt, cut at (and excluding) the first EOS.
    """
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    responses: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        texts = [render_prompt(tokenizer, prompt) for prompt in prompts[start : start + batch_size]]
        batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )  # [batch, prompt + new]
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            responses.append(row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row)
    return responses

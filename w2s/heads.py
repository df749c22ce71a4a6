"""Which causal LMs `w2s.logprobs` may score without materialising logits, and how their output layer is applied.

The fused path reproduces the model's own `logits = f(lm_head(final_hidden))` outside the model, so it must know
`f` exactly. `HEADS` lists, per Hugging Face class, what `f` is: nothing (Llama, Qwen2, Mistral, ...), a scale
(Cohere's `logit_scale`, Granite's `1 / logits_scaling`) or a soft cap (Gemma 2 and 3's
`final_logit_softcapping`). A class not listed (a subclass included, as it may change its forward) takes the plain
path. Each entry is checked against the model's own forward by `tests/w2s/test_logprobs.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def _plain(config) -> tuple[float, float | None]:
    return 1.0, None


def _softcapped(config) -> tuple[float, float | None]:
    return 1.0, getattr(config, "final_logit_softcapping", None)


HEADS: dict[str, Callable[[object], tuple[float, float | None]]] = {
    **dict.fromkeys(
        (
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "GemmaForCausalLM",
            "Phi3ForCausalLM",
            "Olmo2ForCausalLM",
            "Starcoder2ForCausalLM",
            "SmolLM3ForCausalLM",
        ),
        _plain,
    ),
    "Gemma2ForCausalLM": _softcapped,
    "Gemma3ForCausalLM": _softcapped,
    "CohereForCausalLM": lambda config: (float(config.logit_scale), None),
    "GraniteForCausalLM": lambda config: (1.0 / float(config.logits_scaling), None),
}
"""Hugging Face class name -> (scale, soft cap) read from its config: logits = softcap(scale * lm_head(h))."""


@dataclass(frozen=True)
class Head:
    """A model's output layer as the fused path applies it: `softcap(scale * module(hidden))`."""

    module: torch.nn.Module
    vocab: int
    scale: float = 1.0
    softcap: float | None = None

    def is_plain_linear(self) -> bool:
        """True for an `nn.Linear` (not a LoRA or other wrapper) whose weight is whole (not partitioned by ZeRO-3,
        which leaves an empty placeholder outside the layer's own forward)."""
        return type(self.module) is torch.nn.Linear and not hasattr(self.module.weight, "ds_id")


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DeepSpeed engine or DDP (`.module`) or a peft model (`get_base_model()`)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif not hasattr(model, "config") and isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def find_head(model: torch.nn.Module) -> Head | None:
    """The output layer of `model` (wrapped or not) when its class is in `HEADS`, else None (use the plain path)."""
    lm = causal_lm(model)
    rule = HEADS.get(type(lm).__name__)
    layer = lm.get_output_embeddings() if rule is not None else None
    if layer is None or getattr(lm.config, "vocab_size", None) is None:
        return None
    scale, softcap = rule(lm.config)
    return Head(layer, int(lm.config.vocab_size), scale, softcap)

"""Loading a user's model or tokenizer by its role, refusing a missing or broken folder in one line.

Every stage loads models through these two functions, so "the weak_aligned model at /x cannot be loaded" reads the
same everywhere, and `trust_remote_code` is never turned on: a model folder's own Python code is not executed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from w2s.errors import UserError


class ModelError(UserError):
    """A model or tokenizer that cannot be loaded; the message names its role and path."""


def _why(err: Exception) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def check_model_path(role: str, name_or_path: str) -> None:
    """Refuses a local-looking path (absolute, ./, ~, or with more than one '/') that is not a folder."""
    path = Path(name_or_path)
    looks_local = (
        path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists() or name_or_path.count("/") > 1
    )
    if looks_local and not path.is_dir():
        raise ModelError(f"the {role} model {name_or_path}: no such folder")


def load_tokenizer(role: str, name_or_path: str):
    """The tokenizer of the `role` model (e.g. 'policy', 'weak_base')."""
    check_model_path(role, name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError... for one cause: a bad folder
        raise ModelError(f"the {role} tokenizer at {name_or_path} cannot be loaded: {_why(err)}") from err


def load_model_config(role: str, name_or_path: str):
    """The `role` model's config (for engines such as vLLM that load the weights themselves)."""
    check_model_path(role, name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except Exception as err:  # see load_tokenizer
        raise ModelError(f"the {role} model at {name_or_path} cannot be loaded: {_why(err)}") from err


def load_causal_lm(role: str, name_or_path: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The `role` model as a causal LM in `dtype` (in train mode as loaded; callers set eval/frozen)."""
    return _load(AutoModelForCausalLM, role, name_or_path, dtype)


def load_sequence_classifier(role: str, name_or_path: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The `role` model as a sequence classifier (a reward model), in eval mode."""
    return _load(AutoModelForSequenceClassification, role, name_or_path, dtype).eval()


def _load(auto_class, role: str, name_or_path: str, dtype: torch.dtype) -> torch.nn.Module:
    check_model_path(role, name_or_path)
    try:
        return auto_class.from_pretrained(name_or_path, dtype=dtype)
    except Exception as err:  # see load_tokenizer
        raise ModelError(f"the {role} model at {name_or_path} cannot be loaded: {_why(err)}") from err

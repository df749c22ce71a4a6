"""Loading a user's model or tokenizer by its role, refusing a missing or broken folder in one line.

Every stage loads models through these two functions, so "the weak_aligned model at /x cannot be loaded" reads the
same everywhere, and `trust_remote_code` is never turned on: a model folder's own Python code is not executed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from w2s.errors import UserError


class ModelError(UserError):
    """A model or tokenizer that cannot be loaded; the message names its role and path."""


def quiet_loading() -> None:
    """Turns off transformers' per-load progress bars ("Loading weights", "Writing model shards"), which repeat on
    every model a command loads and bury its own progress; the hub's download bars stay. W2S_VERBOSE=1 keeps them."""
    if os.environ.get("W2S_VERBOSE"):
        return
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    hub_bars = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # also turns the hub's off: turned back on below
    if hub_bars:
        enable_progress_bars()


quiet_loading()


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
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError... for one cause: a bad folder
        raise ModelError(f"the {role} tokenizer at {name_or_path} cannot be loaded: {_why(err)}") from err
    restore_bos(role, name_or_path, tokenizer)
    return tokenizer


BOS_FAMILIES = ("gemma",)
"""Model types (prefixes) whose makers require a BOS token at the start of every input: Gemma reads English at a
perplexity of 137 without it and 10 with it. A tokenizer saved without `add_bos_token` (transformers' GGUF reader
drops it) would feed such a model wrongly everywhere its text is not rendered by a chat template."""


def restore_bos(role: str, name_or_path: str, tokenizer) -> None:
    """Makes the tokenizer of a model that needs a BOS add it, and says so on stderr in one line.

    Raises:
        ModelError: the tokenizer cannot be made to add it.
    """
    config = Path(name_or_path) / "config.json"
    if tokenizer.bos_token_id is None or not config.is_file():
        return
    model_type = str(json.loads(config.read_text()).get("model_type", ""))
    if not model_type.startswith(BOS_FAMILIES) or tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        return
    tokenizer.add_bos_token = True
    if tokenizer("a")["input_ids"][:1] != [tokenizer.bos_token_id]:
        raise ModelError(
            f"the {role} tokenizer at {name_or_path} adds no BOS, which {model_type} models need, and cannot be "
            "told to: save it with add_bos_token=true"
        )
    print(
        f"w2s: the {role} tokenizer at {name_or_path} adds no BOS, which {model_type} models need; w2s adds it "
        "(save the tokenizer with add_bos_token=true to silence this)",
        file=sys.stderr,
    )


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
    """The `role` model as a sequence classifier (a reward model), in eval mode.

    Raises:
        ModelError: a checkpoint that lacks some of the classifier's weights (typically its score head: a base or
            causal LM folder). transformers would initialise them at random and say so only in a log line, and
            every reward would be noise.
    """
    model, info = _load(AutoModelForSequenceClassification, role, name_or_path, dtype, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(
            f"the {role} model at {name_or_path} is not a trained sequence classifier: its checkpoint lacks "
            f"{shown}, which transformers would initialise at random (an untrained score head scores noise); use a "
            "reward model's checkpoint, not a base or causal LM"
        )
    return model.eval()


def _load(auto_class, role: str, name_or_path: str, dtype: torch.dtype, **options):
    check_model_path(role, name_or_path)
    try:
        return auto_class.from_pretrained(name_or_path, dtype=dtype, **options)
    except Exception as err:  # see load_tokenizer
        raise ModelError(f"the {role} model at {name_or_path} cannot be loaded: {_why(err)}") from err


RUST_OS_ERROR = re.compile(r"^(?P<why>.*?) \(os error (?P<errno>\d+)\)$")
"""How the Rust `tokenizers` library words an I/O error it raises as a bare Exception: `File too large (os error
27)`."""


def save_tokenizer(tokenizer, folder: Path) -> None:
    """`tokenizer.save_pretrained(folder)`, except that an I/O error of the Rust `tokenizers` library (which raises
    a bare Exception) is raised as the OSError it is, so the CLI prints it as one line (file and reason)."""
    try:
        tokenizer.save_pretrained(folder)
    except OSError:
        raise
    except Exception as err:  # narrowed below: only the library's worded I/O errors are converted
        match = RUST_OS_ERROR.match(str(err))
        if match is None:
            raise
        raise OSError(int(match["errno"]), match["why"], str(folder / "tokenizer.json")) from None

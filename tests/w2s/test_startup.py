"""Start-up: `w2s --help`, a command's --help, `w2s verify` and `w2s inspect` import no model library (torch,
transformers and the others take seconds to import), and a command's --help lists its own section's keys."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from w2s.cli import main
from w2s.config import describe
from w2s.settings import Settings

MODEL_LIBRARIES = ("torch", "transformers", "deepspeed", "datasets", "vllm", "ray", "accelerate")

PROBE = f"""
import sys
from w2s.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:  # --help exits
    code = exit_.code
print("MODEL_LIBRARIES", sorted(m for m in {MODEL_LIBRARIES!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def model_libraries_of(*words: str, cwd=None) -> list[str]:
    """The model libraries a fresh interpreter has imported after `w2s WORDS...` (which must exit 0)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *words], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("MODEL_LIBRARIES "))
    return ast.literal_eval(line.removeprefix("MODEL_LIBRARIES "))


def test_importing_the_command_line_imports_no_model_library():
    probe = f"import sys, w2s.cli; print(sorted(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "[]"


COLLECTOR_PROBE = """
import gc, sys
from w2s.cli import program
sys.argv = ["w2s", *sys.argv[1:]]
code = program()
print("COLLECTOR", gc.isenabled(), gc.get_freeze_count(), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("words", [("inspect", "no-such-cache"), ("cache", "no_such_key=1")])
def test_the_program_turns_the_collector_back_on_with_start_up_frozen(words, tmp_path):
    """The console script keeps the collector off through start-up only: after a refused command line and after
    a command that ran (here refusing a missing cache), it is on again, with start-up's objects frozen."""
    done = subprocess.run(
        [sys.executable, "-c", COLLECTOR_PROBE, *words], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 2 and "w2s" in done.stderr
    enabled, frozen = next(line for line in done.stderr.splitlines() if line.startswith("COLLECTOR ")).split()[1:]
    assert enabled == "True" and int(frozen) > 10_000


@pytest.mark.parametrize("words", [("--help",), ("cache", "--help"), ("train", "--help-all")])
def test_help_imports_no_model_library(words, tmp_path):
    assert model_libraries_of(*words, cwd=tmp_path) == []


def help_of(capsys, *words: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(words))
    assert exit_.value.code == 0
    return capsys.readouterr().out


def keys_in(text: str) -> list[str]:
    """The config keys a help text lists, in order (each row starts with two spaces and the dotted key)."""
    every = {key for key, _, _ in describe(Settings)}
    return [line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.split()[0] in every]


def test_a_command_help_lists_its_own_section_and_names_the_others(capsys):
    shown = keys_in(help_of(capsys, "cache", "--help"))
    own = ["run_root", *(key for key, _, _ in describe(Settings) if key.startswith("cache."))]
    assert shown == own  # every key of its own section, in order, and no other section's
    out = help_of(capsys, "train", "--help")
    assert keys_in(out) == ["run_root", *(key for key, _, _ in describe(Settings) if key.startswith("train."))]
    others = out.split("other sections of the same config file")[1]
    assert [line.split()[0] for line in others.splitlines()[1:] if line.strip()] == [
        "world",
        "cache",
        "eval",
        "generate",
        "export",
    ]


def test_help_all_lists_every_key_its_own_section_first(capsys):
    shown = keys_in(help_of(capsys, "eval", "--help-all"))
    every = [key for key, _, _ in describe(Settings)]
    assert sorted(shown) == sorted(every) and len(shown) == len(every)
    own = [key for key in shown if key.startswith("eval.")]
    assert shown[: len(own) + 1] == ["run_root", *own]


@pytest.mark.integration
def test_verify_and_inspect_import_no_model_library(micro_world, tmp_path):
    from tests.cache.helpers import build

    cache = tmp_path / "cache"
    build(micro_world, cache)
    assert model_libraries_of("verify", str(cache), cwd=tmp_path) == []
    assert model_libraries_of("inspect", str(cache), cwd=tmp_path) == []
    assert (cache / "inspect.png").is_file()


@pytest.mark.integration
def test_the_copy_decoder_decodes_as_transformers_and_only_a_published_copy(micro_world, tmp_path):
    """inspect's transformers-free decoder gives transformers' text for every id, and is used only for the copy
    the run record published with this manifest."""
    from tests.cache.helpers import build
    from w2s.cache.inspect import copy_decoder
    from w2s.cache.store import Cache
    from w2s.models import load_tokenizer

    cache_dir = tmp_path / "cache"
    build(micro_world, cache_dir)
    decoder = copy_decoder(Cache.open(cache_dir))
    tokenizer = load_tokenizer("copy", str(cache_dir / "tokenizer"))
    ids = list(range(len(tokenizer)))
    assert [decoder.decode([i]) for i in ids] == [tokenizer.decode([i]) for i in ids]
    assert decoder.decode(ids[:50]) == tokenizer.decode(ids[:50])
    assert decoder.convert_ids_to_tokens(ids) == tokenizer.convert_ids_to_tokens(ids)
    config = cache_dir / "tokenizer" / "tokenizer_config.json"
    config.write_text(config.read_text() + " ")  # the copy changed after it was published: not trusted
    assert copy_decoder(Cache.open(cache_dir)) is None

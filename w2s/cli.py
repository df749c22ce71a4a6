"""The `w2s` command: `w2s <command> [--config FILE] [key=value ...]`.

Each stage command reads the YAML config (default `configs/tiny.yaml`), applies dotted overrides (a key with
no dot belongs to the command's own section: `w2s cache num_shards=4` is `cache.num_shards=4`), saves the
resolved config beside its output and runs one stage. `w2s <command> --help` lists the keys of the command's own
section with their docstrings (`--help-all`: every section's). Only `w2s.cli`, the config sections and the stage that
runs are imported: no model library for `--help`, `verify` or `inspect`.
"""

from __future__ import annotations

import argparse
import gc
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from w2s.config import describe, field_docs, load_config, save_config, shipped_or_given
from w2s.errors import ConfigError, run_as_command
from w2s.settings import Settings

DEFAULT_CONFIG = "configs/tiny.yaml"


def run_world(settings: Settings, args: argparse.Namespace) -> int:
    from w2s.world.build import build_world

    build_world(settings.world, force=args.force)
    save_config(settings, settings.world.out_dir)
    return 0


def run_cache(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "merge":
        from w2s.cache.merge import merge_parts

        manifest = merge_parts(args.path or settings.cache.out_dir)
        print(f"merged {len(manifest['shards'])} shards, {manifest['totals']['rows']} rows")
        return 0
    from w2s.cache.run import run

    body = run(settings.cache)
    if body.get("scored_now", 1) or not (Path(settings.cache.out_dir) / "config.yaml").exists():
        save_config(settings, settings.cache.out_dir)  # a rerun that scored nothing keeps the config that made it
    return 0


def run_train(settings: Settings, args: argparse.Namespace) -> int:
    from w2s.train.recipe import run

    run(settings.train)
    save_config(settings, settings.train.out_dir)  # only once the run succeeded: a refused run changes nothing
    return 0


def run_eval(settings: Settings, args: argparse.Namespace) -> int:
    from w2s.eval.run import run

    run(settings.eval)
    save_config(settings, settings.eval.out_dir)
    return 0


def run_generate(settings: Settings, args: argparse.Namespace) -> int:
    """`w2s generate` (plain sampling unless generate.generator says otherwise) and `w2s search` (cbs unless it
    says otherwise): one system on one prompt set, resumable, into generate.out_dir."""
    from w2s.eval.generate import run

    default = "cbs" if args.command == "search" else "sample"
    run(settings.generate, default)
    settings.generate.generator = settings.generate.generator or default  # the saved config names what ran
    save_config(settings, settings.generate.out_dir)
    return 0


def run_export(settings: Settings, args: argparse.Namespace) -> int:
    from w2s.eval.export import run

    run(settings.export)
    return 0


def run_inspect(settings: Settings, args: argparse.Namespace) -> int:
    """`w2s inspect CACHE`: rows, tokens, reward statistics and extreme tokens, and a PNG of the rewards."""
    from w2s.cache.inspect import inspect_cache

    inspect_cache(args.path or settings.cache.out_dir)
    return 0


def run_verify(settings: Settings, args: argparse.Namespace) -> int:
    """`w2s verify CACHE`: every store's sizes, checksums and row ids; exit 1 on any problem."""
    from w2s.cache.store import verify_cache

    path = args.path or settings.cache.out_dir
    problems = verify_cache(path)  # a manifest that cannot be opened is reported as one problem
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    print(f"{path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


# name -> (help, runner, the config section bare keys belong to, positional arguments)
COMMANDS: dict[str, tuple[str, Callable[[Settings, argparse.Namespace], int], str, tuple[str, ...]]] = {
    "world": ("build the tiny world (corpus, tokenizer, three models) and print its metrics", run_world, "world", ()),
    "cache": (
        "stage 1: score the dataset under the weak pair and write the cache ('merge' joins worker parts)",
        run_cache,
        "cache",
        ("action", "path"),
    ),
    "train": (
        "stage 2: WSPO training of the strong model on the cache (gammas=[...] sweeps gamma)",
        run_train,
        "train",
        (),
    ),
    "eval": (
        "evaluate every system (world models, WSPO, search, BoN) on the test prompts: report, table, plots",
        run_eval,
        "eval",
        (),
    ),
    "generate": (
        "one model or system (sample, cbs, bon, eft) on a prompt set: responses.jsonl and AlpacaEval's "
        "model_outputs.json, resumable",
        run_generate,
        "generate",
        (),
    ),
    "search": (
        "weak-to-strong search (chunk-level beam search unless generator=bon|eft|sample) on a prompt set; "
        "`w2s generate` with generator cbs",
        run_generate,
        "generate",
        (),
    ),
    "export": (
        "a summarisation dataset (XSUM by default, through `datasets`) as prompt/response jsonl",
        run_export,
        "export",
        (),
    ),
    "inspect": (
        "summarise a cache: rows, tokens, rewards, extreme tokens, and a PNG histogram",
        run_inspect,
        "cache",
        ("path",),
    ),
    "verify": (
        "check a cache's schema, row counts and checksums; exit 1 on any mismatch",
        run_verify,
        "cache",
        ("path",),
    ),
}


ALL_KEYS = "--help-all"


def keys_help(section: str, every_section: bool = False) -> str:
    """A command's config keys for its --help: `run_root` and the keys of its own section (`section`), each with its
    docstring and default, then the other sections of the same config file, by name (`every_section`: their keys).

    Reading field docstrings parses each section's source file, so only the sections shown are read."""
    hints, docs = typing.get_type_hints(Settings), field_docs(Settings)
    others = [name for name in hints if name not in ("run_root", section)]
    rows = [("run_root", repr(Settings.run_root), docs["run_root"]), *describe(hints[section], prefix=f"{section}.")]
    if every_section:
        rows += [row for name in others for row in describe(hints[name], prefix=f"{name}.")]
    width = max(len(key) for key, _, _ in rows)
    text = f"config keys of this command (override with key=value; a bare key is {section}.key):\n" + "\n".join(
        f"  {key:<{width}}  {help_} (default {default})" for key, default, help_ in rows
    )
    if every_section:
        return text
    return f"{text}\n\nother sections of the same config file (`{ALL_KEYS}` lists their keys too):\n" + "\n".join(
        f"  {name:<{width}}  {docs[name]}" for name in others
    )


class CommandParser(argparse.ArgumentParser):
    """A command's parser: its --help ends with its config keys (`keys_help`), read only when help is printed."""

    section = ""
    """The config section the command's bare keys belong to (set by build_parser)."""
    every_section = False
    """Set by --help-all: list the keys of every section."""

    def format_help(self) -> str:
        if self.section:
            self.epilog = keys_help(self.section, self.every_section)
        return super().format_help()


class HelpAll(argparse.Action):
    """`--help-all`: the command's help with the keys of every section of the config file."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.every_section = True
        parser.print_help()
        parser.exit()


def accept_local_rank(parser: argparse.ArgumentParser) -> None:
    """The `deepspeed` launcher appends `--local_rank=N` (before the command, with `--module`); the rank is
    read from the LOCAL_RANK variable every launcher sets, so the argument is accepted and otherwise unused."""
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The command line; each command's --help lists its own section's config keys (`keys_help`)."""
    parser = argparse.ArgumentParser(prog="w2s", description="Weak-to-strong alignment with an offline logit cache.")
    accept_local_rank(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for name, (summary, _, section, _) in COMMANDS.items():
        command = sub.add_parser(
            name, help=summary, description=summary, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        command.section = section
        command.add_argument(ALL_KEYS, action=HelpAll, help="show this help with the keys of every config section")
        command.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            help=f"YAML config file (default {DEFAULT_CONFIG}; configs/<file> not found here is read from the "
            "copy installed with w2s)",
        )
        if name == "world":  # the one stage that can be redone from nothing; elsewhere --force is refused
            command.add_argument("--force", action="store_true", help="rebuild the world even if it is current")
        accept_local_rank(command)
        command.add_argument("words", nargs="*", help="positional arguments, then dotted key=value overrides")
    return parser


def split_words(command: str, words: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """Separates a command's positional arguments from its key=value overrides (bare keys get its section)."""
    _, _, section, positional = COMMANDS[command]
    values = [w for w in words if "=" not in w]
    overrides = [w for w in words if "=" in w]
    if len(values) > len(positional):
        raise ConfigError(f"w2s {command}: unexpected argument(s) {values[len(positional) :]}")
    named = dict(zip(positional, values + [None] * (len(positional) - len(values))))
    if (
        command == "cache"
        and named.get("path")
        and any(o.split("=", 1)[0] in ("out_dir", "cache.out_dir") for o in overrides)
    ):
        raise ConfigError(  # two answers to "which cache?": neither is picked silently
            "merge: name the cache once, either as `merge CACHE_DIR` or as cache.out_dir=..., not both"
        )
    if command == "cache" and named.get("action") not in (None, "merge"):
        # a bare word here is never used silently: `cache.rows_per_shard:4` is a typo, not a path
        raise ConfigError(
            f"w2s cache: unexpected argument {named['action']!r}: overrides are key=value, and the "
            "only positional argument is `merge [CACHE_DIR]`"
        )
    sections = set(Settings.__dataclass_fields__)
    qualified = [o if o.split("=", 1)[0].split(".")[0] in sections else f"{section}.{o}" for o in overrides]
    return named, qualified


def main(argv: list[str] | None = None, whole_process: bool = False) -> int:
    """Runs one `w2s` command line (`argv`, default `sys.argv[1:]`); returns its exit status.

    `whole_process`: this call is the process (the console script, `program`), so the garbage collector is tuned
    for it: off through start-up, whose imports (torch, transformers, the stage) and config make hundreds of
    thousands of objects that live as long as the process, then on again with those objects frozen out of every
    later collection (`gc.freeze`). Collections took 1.2-1.3 s of a 17-18 s `w2s cache` before (0.6 s of it during
    the imports), measured with `gc.callbacks`. Tests call `main` many times in one process, so they keep the
    default collector.
    """
    if whole_process:
        gc.disable()
    try:
        words = sys.argv[1:] if argv is None else argv
        args = build_parser().parse_args(words)
        config_path = shipped_or_given(args.config)  # `configs/<file>` falls back to the copy shipped with w2s
        named, overrides = split_words(args.command, args.words)
        settings = load_config(Settings, config_path, overrides)
    except ConfigError as err:
        print(f"w2s {args.command}: {err}", file=sys.stderr)
        return 2
    finally:
        if whole_process:
            gc.freeze()
            gc.enable()
    for key, value in named.items():
        setattr(args, key, value)
    return run_as_command(f"w2s {args.command}", lambda: COMMANDS[args.command][1](settings, args))


def program() -> int:
    """The `w2s` console script: `main` as the whole process."""
    return main(whole_process=True)


if __name__ == "__main__":
    sys.exit(program())

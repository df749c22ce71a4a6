"""The `w2s` command: `w2s <command> [--config FILE] [key=value ...]`.

Each command reads the YAML config (default `configs/tiny.yaml`), applies dotted overrides, saves the resolved
config beside its output and runs one stage. `w2s <command> --help` lists every key with its docstring.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from w2s.config import ConfigError, describe, load_config, save_config
from w2s.settings import Settings

DEFAULT_CONFIG = "configs/tiny.yaml"


def run_world(settings: Settings, args: argparse.Namespace) -> int:
    from w2s.world.build import build_world

    build_world(settings.world, force=args.force)
    save_config(settings, settings.world.out_dir)
    return 0


COMMANDS: dict[str, tuple[str, Callable[[Settings, argparse.Namespace], int]]] = {
    "world": ("build the tiny world (corpus, tokenizer, three models) and print its metrics", run_world),
}


def _help_epilog() -> str:
    rows = describe(Settings)
    width = max(len(key) for key, _, _ in rows)
    return "config keys (override with key=value):\n" + "\n".join(
        f"  {key:<{width}}  {help_} (default {default})" for key, default, help_ in rows
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="w2s", description="Weak-to-strong alignment with an offline logit cache.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (summary, _) in COMMANDS.items():
        command = sub.add_parser(
            name, help=summary, description=summary, epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
        )
        command.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config file (default {DEFAULT_CONFIG})")
        command.add_argument("--force", action="store_true", help="redo the stage even if its output is current")
        command.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. world.seed=3")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_path = args.config if Path(args.config).exists() or args.config != DEFAULT_CONFIG else None
    try:
        settings = load_config(Settings, config_path, args.overrides)
    except ConfigError as err:
        print(f"w2s {args.command}: {err}", file=sys.stderr)
        return 2
    return COMMANDS[args.command][1](settings, args)


if __name__ == "__main__":
    sys.exit(main())

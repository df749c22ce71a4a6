"""`make lint`: the import layout as a contract. Runs import-linter on `.importlinter` (rooms import only
downward; the core imports no room), then refuses any import cycle between files.

The repository keeps its rooms at the top level and installs them as `w2s.*` (pyproject's package-dir), which
import-linter cannot see through; so the packages are copied into a temporary `w2s/` tree first, as they are
installed. Usage: python scripts/check_layers.py [--graph FILE] (FILE: the room-to-room import counts, as text).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def package_view(target: Path) -> Path:
    """Copies every package of pyproject's package-dir to where it is installed (`cache/` -> `w2s/cache/`)."""
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items()):
        destination = target.joinpath(*package.split("."))
        if package == "w2s":
            destination.mkdir(parents=True)
            for source in (REPO / folder).glob("*.py"):
                shutil.copy2(source, destination / source.name)
        else:
            shutil.copytree(
                REPO / folder, destination, ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "*.json")
            )
    return target


def cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each an import cycle between files."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(module: str) -> None:
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def room_counts(graph) -> dict[tuple[str, str], int]:
    """Imports between rooms (the core is `w2s`): (importer's room, imported's room) -> count."""
    room = lambda module: module.split(".")[1] if module.count(".") >= 2 or module in ROOMS else "w2s"
    counts: dict[tuple[str, str], int] = {}
    for module in graph.modules:
        for other in graph.find_modules_directly_imported_by(module):
            pair = (room(module), room(other))
            if pair[0] != pair[1]:
                counts[pair] = counts.get(pair, 0) + 1
    return counts


ROOMS = ("w2s.cache", "w2s.train", "w2s.eval", "w2s.schemas", "w2s.world", "w2s.search", "w2s.science", "w2s.configs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, help="also write the room-to-room import counts here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="w2s-layers-") as tmp:
        view = package_view(Path(tmp) / "src")
        env = {**os.environ, "PYTHONPATH": str(view)}
        linter = Path(sys.executable).with_name("lint-imports")
        status = subprocess.run([str(linter), "--no-cache", str(REPO / ".importlinter")], env=env, cwd=tmp).returncode
        sys.path.insert(0, str(view))
        import grimp

        graph = grimp.build_graph("w2s", cache_dir=None)
        found = cycles(graph)
    for group in found:
        print(f"import cycle between files: {' <-> '.join(group)}", file=sys.stderr)
    if args.graph:
        lines = [f"{a} -> {b}: {n}" for (a, b), n in sorted(room_counts(graph).items())]
        args.graph.write_text("\n".join(lines) + "\n")
    print(f"import cycles between files: {len(found)}")
    return 1 if status or found else 0


if __name__ == "__main__":
    sys.exit(main())

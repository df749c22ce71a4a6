"""The top-level config: one run root and one typed section per stage.

Each stage's folders default to templates under the run root (`{run_root}/cache`, `{world}/weak_base`, ...), so a
config names a folder once: `{world}`, `{cache}` and `{wspo}` are the world, cache and train sections' own
out_dir. After loading, every placeholder in every string of the tree is replaced; an explicit path is kept as
it is.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from w2s.cache.config import CacheConfig
from w2s.config import require
from w2s.eval.config import EvalConfig, GenerateConfig
from w2s.eval.export import ExportConfig
from w2s.train.config import TrainConfig
from w2s.world.config import WorldConfig

PLACEHOLDER = re.compile(r"\{(run_root|world|cache|wspo)\}")


@dataclass
class Settings:
    """Everything a run needs; `configs/*.yaml` files hold the run root and one mapping per section."""

    run_root: str = "runs/tiny"
    """Folder under which every stage's output goes by default ({run_root}/world, /cache, /wspo, /eval)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The embedded default task (ignored when the other sections point at real models and data)."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """Stage 1: the logit cache."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Stage 2: the WSPO trainer."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Stage 3: evaluation of every declared system on a task, in one report."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """`w2s generate` / `w2s search`: one system on one prompt set, into a responses folder."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """`w2s export`: a summarisation dataset (XSUM) as prompt/response jsonl."""

    def __post_init__(self) -> None:
        require(
            bool(self.run_root) and not PLACEHOLDER.search(self.run_root),
            "run_root",
            f"must be a folder path without placeholders, got {self.run_root!r}",
        )
        for name in ("world", "cache", "train", "eval", "generate"):  # "" would be the working directory
            out_dir = getattr(self, name).out_dir
            require(bool(out_dir.strip()), f"{name}.out_dir", "is empty (an unset variable?); name a folder")
        roots = {"run_root": self.run_root}
        for name, section in (("world", self.world), ("cache", self.cache), ("wspo", self.train)):
            roots[name] = _fill(section.out_dir, roots, f"{name}.out_dir")
        for section in (self.world, self.cache, self.train, self.eval, self.generate, self.export):
            _fill_tree(section, roots)


def _fill(text: str, roots: dict[str, str], key: str) -> str:
    """`text` with each {placeholder} replaced; refuses one that names a folder not known yet."""

    def replace(match: re.Match) -> str:
        require(
            match.group(1) in roots,
            key,
            f"{match.group(0)} cannot be used here (it is not defined before it); use "
            f"{', '.join('{' + name + '}' for name in roots)} or an explicit path",
        )
        return roots[match.group(1)]

    return PLACEHOLDER.sub(replace, text)


def _fill_tree(node: Any, roots: dict[str, str], key: str = "") -> Any:
    """Replaces placeholders in every string of a dataclass tree (nested sections, lists, mappings), in place."""
    if dataclasses.is_dataclass(node):
        for item in dataclasses.fields(node):
            setattr(node, item.name, _fill_tree(getattr(node, item.name), roots, f"{key}.{item.name}".lstrip(".")))
        return node
    if isinstance(node, str):
        return _fill(node, roots, key)
    if isinstance(node, list):
        return [_fill_tree(value, roots, f"{key}[{i}]") for i, value in enumerate(node)]
    if isinstance(node, dict):
        return {name: _fill_tree(value, roots, f"{key}.{name}") for name, value in node.items()}
    return node

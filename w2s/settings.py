"""The top-level config: one typed section per stage. Later stages add their sections here."""

from __future__ import annotations

from dataclasses import dataclass, field

from w2s.cache.config import CacheConfig
from w2s.eval.config import EvalConfig
from w2s.train.config import TrainConfig
from w2s.world.config import WorldConfig


@dataclass
class Settings:
    """Everything a run needs; `configs/*.yaml` files hold one mapping per section."""

    world: WorldConfig = field(default_factory=WorldConfig)
    """The embedded default task (ignored when the other sections point at real models and data)."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """Stage 1: the logit cache."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Stage 2: the WSPO trainer."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Stage 3: evaluation of every system (world models, WSPO, weak-to-strong search, BoN) in one report."""

"""Science regression: on a micro world, over two seeds, the direction of the effects the papers claim.

The same driver as `make science` (`w2s.science.tiny`: world, cache, WSPO, evaluation), on the tone task (the
effect a micro world learns in seconds: the share of positive tone words), with the per-prompt scores of two
seeds pooled into paired differences. A change that breaks the weak alignment, the cache's weak ratio, the WSPO
loss or the search's guidance moves one of these differences to zero or below, and the test fails.
"""

from __future__ import annotations

import dataclasses

import pytest

from w2s.eval.config import SystemConfig
from w2s.eval.stats import paired_difference
from w2s.science.tiny import Cell, ScienceConfig, evaluate, prepare
from w2s.train.config import TrainConfig
from w2s.world.config import ModelShape, WorldConfig

SEEDS = (0, 1)
GAMMA = 0.3


def micro_science(out_dir: str) -> ScienceConfig:
    """Tone task only, one gamma, 32 test prompts a seed; models trained for tens of steps."""
    world = WorldConfig(
        num_train=400, num_align=400, num_cache=64, num_test=32, num_val=8, vocab_size=400, batch_size=16,
        weak=ModelShape(64, 1, 60, 3e-3), strong=ModelShape(128, 2, 60, 3e-3), align_steps=40, sft_steps=1,
        eval_examples=1, threads=1,
    )  # fmt: skip
    train = TrainConfig(lr=2e-3, epochs=2, micro_batch_size=8, grad_accum=1, log_every=50, check_rows=2)
    return ScienceConfig(
        out_dir=out_dir, seeds=list(SEEDS), tasks=["tone"], world=world, train=train, gammas=[GAMMA],
        eft_betas=[1.0], search={"width": 2, "num_samples": 4, "chunk_len": 8}, num_val=8, num_test=32,
    )  # fmt: skip


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """Per system, the per-prompt tone rewards of every seed ([seeds][prompts])."""
    config = micro_science(str(tmp_path_factory.mktemp("science")))
    out = {}
    for seed in SEEDS:
        cell = Cell(config, seed, "tone")
        prepare(cell)
        strong = cell.model("strong_base")
        specs = [
            SystemConfig("weak_base", cell.model("weak_base")),
            SystemConfig("weak_aligned", cell.model("weak_aligned")),
            SystemConfig("strong_base", strong),
            SystemConfig("wspo", cell.wspo(GAMMA)),
            SystemConfig("search", strong, "cbs", dict(config.search)),
        ]
        for spec in specs:
            row = evaluate(cell, "test", spec)
            out.setdefault(spec.name, []).append([example["tone_reward"] for example in row["per_example"]])
    return out


# Margins, from the intervals measured on this machine (2 seeds x 32 prompts, 95% two-level bootstrap):
#   weak_aligned - weak_base   0.206 [0.102, 0.307]
#   wspo - strong_base         0.230 [0.091, 0.359]
#   search - strong_base       0.242 [0.147, 0.342]
# Each test asserts (1) the direction at the 95% level: the interval's low end above 0, and (2) a floor on the
# mean at half the measured low end (0.05, 0.045, 0.07): about 2.5 to 3 standard errors under the measured mean
# (half-widths 0.10 to 0.13, so one standard error is about 0.06), so a draw on another CPU type (the numbers are
# bitwise reproducible per CPU type only) clears it, while a change that takes the effect to zero cannot.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("better", "worse", "floor"),
    [("weak_aligned", "weak_base", 0.05), ("wspo", "strong_base", 0.045), ("search", "strong_base", 0.07)],
)
def test_effect_direction_on_the_tone_task(scores, better, worse, floor):
    difference = paired_difference(scores[better], scores[worse])
    print(f"{better} - {worse}: {difference.text()}")
    assert difference.low > 0, f"{better} is not above {worse} at the 95% level: {difference.text()}"
    assert difference.mean > floor, f"{better} - {worse} fell under its floor {floor}: {difference.text()}"


def test_a_shared_world_is_used_as_it_is_and_refused_when_it_is_not_this_configs(micro_world, tmp_path):
    """`world_dir` reads another run's world (never builds or changes it) and puts the caches in this run's
    folder; a folder without a finished world, or a world of other settings, is refused naming world_dir."""
    from tests.conftest import micro_world_config
    from w2s.config import ConfigError
    from w2s.science.tiny import check_shared_world

    world = micro_world_config(str(micro_world))
    config = ScienceConfig(out_dir=str(tmp_path / "run"), world=world, world_per_seed=False,
                           world_dir=str(micro_world), cache_dtype="bfloat16", num_val=8, num_test=8)  # fmt: skip
    cell = Cell(config, 0, "tone")
    assert cell.world == micro_world and cell.cache == tmp_path / "run" / "tone" / "cache"
    check_shared_world(world)  # the micro world of these settings: accepted
    other = dataclasses.replace(world, align_steps=world.align_steps + 1)
    with pytest.raises(ConfigError, match="world_dir: .* other settings"):
        check_shared_world(other)
    with pytest.raises(ConfigError, match="world_dir: .* no finished world"):
        check_shared_world(dataclasses.replace(world, out_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="world_dir: needs world_per_seed: false"):
        ScienceConfig(world=world, world_dir=str(micro_world), num_val=8, num_test=8)
    with pytest.raises(ConfigError, match="cache_dtype: one of"):
        ScienceConfig(world=world, cache_dtype="fp8", num_val=8, num_test=8)

"""The trainer refuses or stops rather than publish the wrong thing: reference proof, non-finite steps, atomic
`final/`, a done marker, bounded checkpoints, and refused runs that leave an existing run untouched."""

from __future__ import annotations

import json

import pytest
import torch

from tests.cache.helpers import build
from tests.train.test_recipe import train_config
from w2s.cli import main
from w2s.errors import CacheMismatch
from w2s.train import checkpoints
from w2s.train.guards import TrainingStopped, check_finite, check_reference_batch
from w2s.train.metrics import read_metrics
from w2s.train.recipe import run


@pytest.fixture(scope="module")
def cache_with_ref(micro_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "cache"
    build(micro_world, out, strong_ref=str(micro_world / "strong_base"))
    return out


def test_reference_gap_and_finiteness_checks_refuse_with_numbers():
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    policy = torch.tensor([[0.0, -1.0, -2.0]])
    assert check_reference_batch(policy, policy + 1e-5, mask, "float32", "p", "r") < 1e-3
    with pytest.raises(CacheMismatch, match=r"policy p differs from the cached reference r by 0.6"):
        check_reference_batch(policy, policy - 0.6, mask, "float32", "p", "r")
    with pytest.raises(TrainingStopped, match=r"step 7: the loss became non-finite.*last good checkpoint, ck/step-5"):
        check_finite(7, float("nan"), 1.0, "ck/step-5")
    with pytest.raises(TrainingStopped, match=r"gradient norm.*no checkpoint was saved"):
        check_finite(1, 0.5, float("inf"), None)
    check_finite(3, 0.5, None, None)


@pytest.mark.integration
def test_a_policy_other_than_the_cached_reference_is_refused_naming_both(micro_world, cache_with_ref, tmp_path):
    other = str(micro_world / "weak_aligned")  # same tokenizer, different model
    with pytest.raises(CacheMismatch, match=r"the policy .*weak_aligned is not the strong reference .*strong_base"):
        run(train_config(micro_world, cache_with_ref, tmp_path / "a", policy=other, max_steps=1))
    assert not (tmp_path / "a" / "checkpoints").exists()
    # deliberately: either the policy's own frozen copy, or the cached reference on purpose
    (own,) = run(
        train_config(micro_world, cache_with_ref, tmp_path / "b", policy=other, max_steps=1, use_cached_ref=False)
    )
    first = read_metrics(tmp_path / "b")[0]
    assert own["steps"] == 1 and abs(first["strong_ratio_mean"]) < 1e-6  # a true reference: ratio 0 at step 1
    run(train_config(micro_world, cache_with_ref, tmp_path / "c", policy=other, max_steps=1, accept_other_ref=True))
    assert abs(read_metrics(tmp_path / "c")[0]["strong_ratio_mean"]) > 1e-3  # the objective the user chose


@pytest.mark.integration
def test_a_non_finite_step_stops_the_run_keeps_the_last_checkpoint_and_publishes_nothing(
    micro_world, cache_with_ref, tmp_path
):
    out = tmp_path / "blowup"
    with pytest.raises(TrainingStopped, match=r"step \d+: the .*non-finite.*without publishing final/"):
        run(train_config(micro_world, cache_with_ref, out, lr=1e30, clip=0.0, save_every=1, max_steps=6))
    assert not (out / "final").exists() and not (out / checkpoints.DONE).exists()
    assert checkpoints.checkpoint_tags(out)  # the checkpoints before the bad step are there


@pytest.mark.integration
def test_final_is_atomic_done_is_a_marker_and_only_k_checkpoints_are_kept(micro_world, cache_with_ref, tmp_path):
    out = tmp_path / "run"
    run(train_config(micro_world, cache_with_ref, out, save_every=1, max_steps=4, keep_checkpoints=2))
    assert [step for step, _ in checkpoints.checkpoint_tags(out)] == [3, 4]
    state = json.loads((out / "checkpoints" / "step-4" / checkpoints.STATE).read_text())
    assert state == {"step": 4, "epoch": 0, "consumed": 32}
    assert (out / checkpoints.DONE).exists() and not list(out.glob(".final.tmp-*"))
    (again,) = run(train_config(micro_world, cache_with_ref, out, save_every=1, max_steps=4, keep_checkpoints=2))
    assert again.get("already_done")
    # a final/ cut short (no done marker) is never taken for a finished run
    (out / checkpoints.DONE).unlink()
    (out / "final" / "config.json").write_text("")
    (redone,) = run(train_config(micro_world, cache_with_ref, out, save_every=1, max_steps=4, keep_checkpoints=2))
    assert not redone.get("already_done") and (out / "final" / "config.json").stat().st_size > 0


def test_publish_final_leaves_nothing_when_writing_fails(tmp_path):
    def broken(folder):
        (folder / "config.json").write_text("")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        checkpoints.publish_final(tmp_path, broken)
    assert not (tmp_path / "final").exists()
    checkpoints.remove_stale_temporaries(tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.integration
def test_a_refused_train_leaves_the_existing_run_untouched(micro_world, cache_with_ref, tmp_path, capsys):
    out = tmp_path / "cli"
    words = [
        f"train.cache_dir={cache_with_ref}",
        f"train.policy={micro_world / 'strong_base'}",
        f"train.out_dir={out}",
        "train.max_steps=2",
        "train.micro_batch_size=4",
    ]
    assert main(["train", *words]) == 0
    before = {p: p.read_bytes() for p in (out / "config.yaml", out / "provenance.json", out / checkpoints.DONE)}
    assert main(["train", *words, "train.gamma=0.7"]) == 2
    assert "holds another run of `w2s train` (train.loss.gamma differ)" in capsys.readouterr().err
    assert all(path.read_bytes() == data for path, data in before.items())


@pytest.mark.integration
def test_no_optimizer_checkpoint_at_the_end_unless_asked(micro_world, cache_with_ref, tmp_path):
    """save_every=0 writes final/ and the done marker, no DeepSpeed checkpoint; a rerun is still "already done".
    save_final_checkpoint=true adds the one checkpoint, to continue training later."""
    lean = tmp_path / "lean"
    (summary,) = run(train_config(micro_world, cache_with_ref, lean, max_steps=2))
    assert summary["steps"] == 2 and (lean / "final" / "config.json").exists() and (lean / checkpoints.DONE).exists()
    assert not (lean / checkpoints.CHECKPOINTS).exists()
    (again,) = run(train_config(micro_world, cache_with_ref, lean, max_steps=2, verify_cache="full"))
    assert again == {"out_dir": str(lean), "steps": 2, "already_done": True}  # the verify level is not the run's
    kept = tmp_path / "kept"
    run(train_config(micro_world, cache_with_ref, kept, max_steps=2, save_final_checkpoint=True))
    assert [step for step, _ in checkpoints.checkpoint_tags(kept)] == [2]


def test_the_start_up_check_is_a_choice_and_not_part_of_the_run():
    from w2s.config import ConfigError, load_config
    from w2s.settings import Settings
    from w2s.train.recipe import NOT_PROVENANCE

    with pytest.raises(ConfigError, match=r"train.verify_cache: 'all' is not one of \['sizes', 'sample', 'full'\]"):
        load_config(Settings, None, ["train.verify_cache=all"])
    settings = load_config(Settings, None, ["train.verify_cache=sizes", "train.save_final_checkpoint=true"])
    assert settings.train.verify_cache == "sizes" and settings.train.save_final_checkpoint
    assert {"verify_cache", "save_final_checkpoint"} <= set(NOT_PROVENANCE)  # a rerun may change them and resume

"""A few real DeepSpeed steps on the micro world: outputs, exact resume, cached-vs-online parity, refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.cache.helpers import build
from w2s.errors import CacheMismatch
from w2s.train.config import TrainConfig
from w2s.train.metrics import read_metrics
from w2s.train.recipe import run
from w2s.world.tokenizer import train_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache_with_ref(micro_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "cache"
    build(micro_world, out, strong_ref=str(micro_world / "strong_base"))
    return out


def train_config(world, cache, out, **overrides):
    settings = dict(
        out_dir=str(out),
        cache_dir=str(cache),
        policy=str(world / "strong_base"),
        micro_batch_size=4,
        grad_accum=2,
        lr=1e-3,
        max_steps=4,
        seed=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_training_writes_a_loadable_model_metrics_and_curves(micro_world, cache_with_ref, tmp_path):
    (summary,) = run(train_config(micro_world, cache_with_ref, tmp_path / "wspo"))
    rows = read_metrics(tmp_path / "wspo")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["steps"] == 4
    assert all(r["tokens"] > 0 and 0 <= r["read_seconds"] <= r["step_seconds"] for r in rows)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "wspo" / "final")
    start = AutoModelForCausalLM.from_pretrained(micro_world / "strong_base")
    changed = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values())]
    assert any(changed)
    assert (tmp_path / "wspo" / "curves.png").stat().st_size > 1000
    assert list((tmp_path / "wspo" / "tensorboard").iterdir())
    provenance = json.loads((tmp_path / "wspo" / "final" / "w2s_provenance.json").read_text())
    assert provenance["cache"]["models"]["weak_base"]["weights_sha256"] and provenance["train"]["loss"] == {
        "_component_": "w2s.train.losses.WSPO",
        "gamma": 0.1,
    }


def test_cached_and_online_training_give_the_same_loss_every_step(micro_world, cache_with_ref, tmp_path):
    cached = run(train_config(micro_world, cache_with_ref, tmp_path / "cached"))
    online = run(train_config(micro_world, cache_with_ref, tmp_path / "online", mode="online"))
    assert cached and online
    a, b = read_metrics(tmp_path / "cached"), read_metrics(tmp_path / "online")
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["weak_ratio_mean"] == pytest.approx(y["weak_ratio_mean"], abs=1e-5)


KILLABLE = """
import sys
from tests.train.test_recipe import train_config
from w2s.train.recipe import run
from pathlib import Path
run(train_config(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), max_steps=0, epochs=6, save_every=2,
                 micro_batch_size=2, grad_accum=1))
"""


@pytest.mark.slow  # a process killed and rerun: tens of seconds; in `make test`, not `make test-fast`
def test_kill_9_and_rerun_continues_exactly(micro_world, cache_with_ref, tmp_path):
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")  # set in this process by earlier runs
    env = {**{k: v for k, v in os.environ.items() if k not in launcher}, "PYTHONPATH": os.getcwd()}
    args = [sys.executable, "-c", KILLABLE, str(micro_world), str(cache_with_ref)]
    subprocess.run(args + [str(tmp_path / "straight")], env=env, check=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + [str(killed)], env=env)
    while proc.poll() is None and not (killed / "checkpoints" / "latest").exists():
        time.sleep(0.01)
    time.sleep(0.3)  # let it run past the checkpoint, so the rerun must discard steps it had done
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    subprocess.run(args + [str(killed)], env=env, check=True)
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(killed)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(1, 121))
    for x, y in zip(straight, resumed):
        assert (x["epoch"], x["consumed"]) == (y["epoch"], y["consumed"])
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6), x["step"]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(killed / "final").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_refuses_a_cache_tokenised_differently(micro_world, cache_with_ref, tmp_path):
    other = tmp_path / "other_policy"
    shutil.copytree(micro_world / "strong_base", other)
    texts = [json.loads(line)["prompt"] for line in (micro_world / "data" / "train.jsonl").read_text().splitlines()]
    train_tokenizer(texts, 350).save_pretrained(other)
    with pytest.raises(
        CacheMismatch, match=r"tokenises row 0 of .*cache\.jsonl differently .* first difference at token"
    ):
        run(train_config(micro_world, cache_with_ref, tmp_path / "x", policy=str(other)))


def test_refuses_a_corrupted_shard_and_an_unknown_schema(micro_world, cache_with_ref, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cache_with_ref, broken)
    shard = broken / "parquet" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CacheMismatch, match=r"(?s)fails verification.*shard-00001.parquet: sha256"):
        run(train_config(micro_world, broken, tmp_path / "x"))
    manifest = json.loads((cache_with_ref / "manifest.json").read_text())
    future = tmp_path / "future"
    shutil.copytree(cache_with_ref, future)
    (future / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(CacheMismatch, match="schema version 99"):
        run(train_config(micro_world, future, tmp_path / "y"))


def test_gamma_sweep_lora_and_zero3(micro_world, cache_with_ref, tmp_path):
    results = run(
        train_config(
            micro_world,
            cache_with_ref,
            tmp_path / "sweep",
            gammas=[0.1, 1.0],
            max_steps=2,
            lora=True,
            use_cached_ref=False,
        )
    )
    assert [r["loss"]["gamma"] for r in results] == [0.1, 1.0]
    for gamma in ("0.1", "1"):
        assert AutoModelForCausalLM.from_pretrained(tmp_path / "sweep" / f"gamma-{gamma}" / "final") is not None
    run(
        train_config(
            micro_world, cache_with_ref, tmp_path / "z3", max_steps=2, deepspeed_config="configs/ds_zero3.json"
        )
    )
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "z3" / "final")
    assert final.num_parameters() == AutoModelForCausalLM.from_pretrained(micro_world / "strong_base").num_parameters()


def final_weights(out):
    return AutoModelForCausalLM.from_pretrained(out / "final").state_dict()


def test_one_process_skips_the_all_reduce_and_trains_the_same(micro_world, cache_with_ref, tmp_path, monkeypatch):
    import w2s.train.recipe as recipe

    seen = []
    skip = recipe.skip_lone_allreduce
    monkeypatch.setattr(recipe, "skip_lone_allreduce", lambda engine, n: (skip(engine, n), seen.append(engine))[0])
    run(train_config(micro_world, cache_with_ref, tmp_path / "lean", max_steps=3))
    assert seen[-1].enable_backward_allreduce is False
    monkeypatch.setattr(recipe, "skip_lone_allreduce", lambda engine, n: seen.append(engine))  # today's behaviour
    run(train_config(micro_world, cache_with_ref, tmp_path / "reduced", max_steps=3))
    assert seen[-1].enable_backward_allreduce is True
    lean, reduced = read_metrics(tmp_path / "lean"), read_metrics(tmp_path / "reduced")
    assert [r["loss"] for r in lean] == [r["loss"] for r in reduced]
    a, b = final_weights(tmp_path / "lean"), final_weights(tmp_path / "reduced")
    assert all(torch.equal(a[k], b[k]) for k in a)


TWO_RANKS = """
import hashlib, json, sys, torch
from pathlib import Path
from tests.train.test_recipe import train_config
from w2s.train.recipe import setup, train
out = Path(sys.argv[3])
run = setup(train_config(Path(sys.argv[1]), Path(sys.argv[2]), out, max_steps=2, micro_batch_size=2))
train(run)
weights = b"".join(p.detach().numpy().tobytes() for p in run.engine.module.parameters())
result = {"all_reduce": run.engine.enable_backward_allreduce, "weights": hashlib.sha256(weights).hexdigest()}
(out / f"rank-{torch.distributed.get_rank()}.json").write_text(json.dumps(result))
"""


def test_two_processes_keep_the_all_reduce(micro_world, cache_with_ref, tmp_path):
    """torchrun, 2 processes on gloo: each rank reads other rows, and the all-reduce keeps their weights equal."""
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    env = {**{k: v for k, v in os.environ.items() if k not in launcher}, "PYTHONPATH": os.getcwd()}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python"]
    args = [sys.executable, "-c", TWO_RANKS, str(micro_world), str(cache_with_ref), str(tmp_path / "two")]
    done = subprocess.run([*torchrun, *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(rank["all_reduce"] for rank in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # same weights on both ranks after two steps on different rows


def test_training_on_a_compact_cache(micro_world, cache_with_ref, tmp_path):
    """float16 and bfloat16 compact caches: the cached reference is still proved (the policy is rounded as the
    cache rounded), and the losses stay near those of the float32 full store."""
    full = read_metrics_of(micro_world, cache_with_ref, tmp_path / "full")
    for dtype, tolerance in (("float16", 2e-3), ("bfloat16", 2e-2)):
        compact = tmp_path / f"cache-{dtype}"
        build(micro_world, compact, strong_ref=str(micro_world / "strong_base"), store="compact", storage_dtype=dtype)
        assert not (compact / "parquet" / "shard-00000.parquet").read_bytes().count(b"logp_weak_base")
        losses = read_metrics_of(micro_world, compact, tmp_path / f"wspo-{dtype}")
        assert losses == pytest.approx(full, abs=tolerance), dtype


def read_metrics_of(world, cache, out):
    run(train_config(world, cache, out, max_steps=3))
    return [r["loss"] for r in read_metrics(out)]

"""`w2s train` under every launcher (2 CPU processes on gloo each) and from an empty folder, and the policy loaded
into ZeRO-3 partitions.

The launchers run at once (the machine's cores are shared anyway), against a 1-process run of the same global
batch: with metrics averaged over ranks, each launcher's logged loss is the loss of all 4 rows of the step, which
is what the 1-process run (micro-batch 4) logs; rank 0's own 2 rows would give another number. The SLURM script
runs as it is, with `srun` and `scontrol` replaced on PATH by shims that run the command here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cache.helpers import build
from w2s.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # 2-process DeepSpeed under four launchers: about a minute

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
LAUNCHERS = ("deepspeed", "torchrun", "accelerate", "slurm")
SRUN = '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n'  # drops srun's options, runs the rest
SCONTROL = '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && echo 127.0.0.1\n'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what an earlier in-process run set for its world of one."""
    return {**{k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}, "TQDM_DISABLE": "1", **extra}


def train_words(world: Path, cache: Path, out: Path, micro_batch: int) -> list[str]:
    return [
        "train",
        f"train.policy={world / 'strong_base'}",
        f"train.cache_dir={cache}",
        f"train.out_dir={out}",
        "train.max_steps=2",
        f"train.micro_batch_size={micro_batch}",
        "train.grad_accum=1",
        "train.lr=1e-3",
        "train.gamma=0.1",
    ]


def command(launcher: str, words: list[str], root: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start `w2s train` on 2 processes under `launcher`."""
    port = str(free_port())
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port, "--module", "w2s.cli", *words], {}
    if launcher == "torchrun":
        return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", port, "-m", "w2s.cli", *words], {}
    if launcher == "accelerate":
        flags = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", port]
        flags += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        return [str(BIN / "accelerate"), "launch", *flags, "-m", "w2s.cli", *words], {}
    shims = root / "slurm-shims"
    shims.mkdir(exist_ok=True)
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL)):
        (shims / name).write_text(body)
        (shims / name).chmod(0o755)
    env = dict(PATH=f"{shims}:{os.environ['PATH']}", PYTHON=sys.executable, GPUS_PER_NODE="2", MASTER_PORT=port)
    env.update(SLURM_JOB_NODELIST="node-a", SLURM_NNODES="1", SLURM_JOB_ID="4242")
    return ["bash", str(REPO / "scripts" / "slurm_train.sbatch"), *words[1:]], env


ZERO3_LOAD = """
import json, sys, deepspeed, torch
from pathlib import Path
from w2s.models import load_causal_lm
from w2s.train.config import TrainConfig
from w2s.train.engine import deepspeed_settings, init_distributed, load_policy
policy, out = sys.argv[1], Path(sys.argv[2])
init_distributed()
config = TrainConfig(policy=policy, zero_stage=3, precision="bf16")
settings = deepspeed_settings(config, torch.distributed.get_world_size())
model = load_policy(config, settings)
params = list(model.parameters())
seen = {
    "count": len(params),
    "partitioned": all(hasattr(p, "ds_numel") for p in params),
    "whole": sum(p.ds_numel for p in params),
    "shard": sum(p.ds_tensor.numel() for p in params),
    "held": sum(p.numel() for p in params),
    "dtypes": sorted({str(p.ds_tensor.dtype) for p in params}),
}
engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=settings)
ids = torch.arange(1, 9).unsqueeze(0)
engine.eval()
with torch.no_grad():
    plain = load_causal_lm("policy", policy, dtype=torch.bfloat16).eval()(input_ids=ids).logits
    sharded = engine(input_ids=ids).logits
seen["logits_dtype"] = str(sharded.dtype)
seen["max_gap"] = float((plain.float() - sharded.float()).abs().max())
seen["scale"] = float(plain.float().abs().max())
(out / f"rank-{torch.distributed.get_rank()}.json").write_text(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def launched(micro_world, tmp_path_factory):
    """Every launcher's run, the 1-process run (the `w2s` command started in an empty folder) and the ZeRO-3
    load, started together; name -> (out_dir, return code, log)."""
    root = tmp_path_factory.mktemp("launchers")
    cache = root / "cache"
    build(micro_world, cache, strong_ref=str(micro_world / "strong_base"))
    (root / "empty").mkdir()
    jobs = {"one": ([str(BIN / "w2s"), *train_words(micro_world, cache, root / "one", 4)], {}, root / "empty")}
    for launcher in LAUNCHERS:
        words = train_words(micro_world, cache, root / launcher, 2)
        words += ["train.gradient_checkpointing=true"] * (launcher == "torchrun")  # the same losses with it on
        jobs[launcher] = (*command(launcher, words, root), root)
    (root / "zero3").mkdir()
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
    zero3 = [*torchrun, "-c", ZERO3_LOAD, str(micro_world / "strong_base"), str(root / "zero3")]
    jobs["zero3"] = (zero3, {"PYTHONPATH": str(REPO)}, root)
    started = {}
    for name, (argv, extra, cwd) in jobs.items():
        log = open(root / f"{name}.log", "w")
        started[name] = (subprocess.Popen(argv, cwd=cwd, env=clean_env(**extra), stdout=log, stderr=log), log)
    results = {}
    for name, (proc, log) in started.items():
        code = proc.wait(timeout=900)
        log.close()
        results[name] = (root / name, code, (root / f"{name}.log").read_text())
    return results


def test_w2s_train_runs_from_an_empty_directory(launched):
    """The `w2s` command, started in an empty folder with absolute paths and no config file, trains with the
    DeepSpeed settings it builds itself and writes nothing into that folder."""
    out, code, log = launched["one"]
    assert code == 0, log[-3000:]
    assert (out / "final" / "model.safetensors").is_file() and (out / "done.json").is_file()
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert list((out.parent / "empty").iterdir()) == []


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_trains_on_two_ranks_and_logs_their_mean(launched, launcher):
    """2 ranks of 2 rows: the logged loss of each step is the mean of both ranks' losses, i.e. the loss of the
    1-process run over the same 4 rows (rank 0's own loss differs by about 2% here), written once."""
    out, code, log = launched[launcher]
    assert code == 0, log[-3000:]
    one_out, one_code, one_log = launched["one"]
    assert one_code == 0, one_log[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # written by one rank only
    rows, alone = read_metrics(out), read_metrics(one_out)
    assert [r["consumed"] for r in rows] == [r["consumed"] for r in alone] == [4, 8]  # 2 ranks x 2 rows a step
    for mean, whole in zip(rows, alone):  # the mean of both ranks' losses is the loss of all 4 rows
        assert mean["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-7), mean["step"]
        assert mean["tokens"] == pytest.approx(whole["tokens"] / 2)  # each rank's micro-batch, on average
    assert (out / "final" / "model.safetensors").is_file() and (out / "done.json").is_file()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("final")) == ["final"]


def test_zero3_loads_the_policy_into_bf16_partitions(launched):
    """2 processes: each holds half of every weight from the moment it is loaded, in bfloat16, and the
    partitioned model computes what the whole one does (the checkpoint was loaded into the shards)."""
    out, code, log = launched["zero3"]
    assert code == 0, log[-3000:]
    ranks = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    for seen in ranks:
        assert seen["partitioned"] and seen["held"] == 0  # nothing whole on the rank after from_pretrained
        assert seen["shard"] <= seen["whole"] // 2 + seen["count"]  # its half (each weight's shard padded by < 2)
        assert seen["dtypes"] == ["torch.bfloat16"] and seen["logits_dtype"] == "torch.bfloat16"
        assert seen["max_gap"] < seen["scale"] / 50  # bf16 rounding only: other weights would differ wholly
    assert sum(seen["shard"] for seen in ranks) >= ranks[0]["whole"]


def test_gradient_checkpointing_is_turned_on(micro_world):
    from w2s.train.config import TrainConfig
    from w2s.train.engine import deepspeed_settings, load_policy

    config = TrainConfig(policy=str(micro_world / "strong_base"), gradient_checkpointing=True)
    model = load_policy(config, deepspeed_settings(config, 1))
    assert model.is_gradient_checkpointing and model.config.use_cache is False
    config = TrainConfig(policy=str(micro_world / "strong_base"))
    assert not load_policy(config, deepspeed_settings(config, 1)).is_gradient_checkpointing

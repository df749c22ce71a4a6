"""`w2s cache engine=ray` on a real local Ray (2 CPUs): byte-identical stores, one model load per actor, an actor
killed mid-shard and a driver killed mid-run both survived, and the store read back with `ray.data`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cache.helpers import build, cache_config
from w2s.cache.build import setup
from w2s.cache.config import CacheConfig
from w2s.cache.manifest import RUN_ONLY, recorded_config
from w2s.cache.ray_engine import actor_resources, build_on_ray, cluster_address, import_ray, pool_size
from w2s.cache.run import run
from w2s.errors import ConfigError
from w2s.models import ModelError
from w2s.schemas.cache import stale_temporaries

ROWS, ROWS_PER_SHARD = 120, 12  # 10 shards, each long enough to be killed in the middle of


# --- the resource request, the pool and the refusals: no Ray needed --------------------------------------------


def test_actors_ask_for_gpus_only_where_the_backend_and_the_cluster_have_them():
    cpu_cluster, gpu_cluster = {"CPU": 8.0}, {"CPU": 64.0, "GPU": 8.0}
    config = CacheConfig()
    assert actor_resources(config, "transformers", cpu_cluster) == {"num_cpus": 1, "num_gpus": 0}
    assert actor_resources(config, "transformers", cpu_cluster, threads=4) == {"num_cpus": 4, "num_gpus": 0}
    assert actor_resources(config, "transformers", gpu_cluster, threads=4) == {"num_cpus": 1, "num_gpus": 1}
    assert actor_resources(CacheConfig(device="cpu"), "transformers", gpu_cluster)["num_gpus"] == 0
    assert actor_resources(CacheConfig(tensor_parallel_size=4), "vllm", gpu_cluster)["num_gpus"] == 4
    with pytest.raises(ConfigError, match="needs 2 GPU.*has 0"):
        actor_resources(CacheConfig(tensor_parallel_size=2), "vllm", cpu_cluster)
    with pytest.raises(ConfigError, match="device cuda needs 1 GPU"):
        actor_resources(CacheConfig(device="cuda"), "transformers", cpu_cluster)


def test_the_pool_fills_the_cluster_but_never_outnumbers_the_shards():
    cpu = {"num_cpus": 1, "num_gpus": 0}
    assert pool_size(CacheConfig(), cpu, {"CPU": 8.0}, shards=100) == 8
    assert pool_size(CacheConfig(), cpu, {"CPU": 8.0}, shards=3) == 3
    assert pool_size(CacheConfig(), {"num_cpus": 1, "num_gpus": 4}, {"CPU": 64.0, "GPU": 8.0}, shards=100) == 2
    assert pool_size(CacheConfig(), {"num_cpus": 4, "num_gpus": 0}, {"CPU": 8.0}, shards=100) == 2
    assert pool_size(CacheConfig(ray_actors=5), cpu, {"CPU": 8.0}, shards=100) == 5
    assert pool_size(CacheConfig(ray_actors=5), cpu, {"CPU": 2.0}, shards=100) == 2  # more could not be placed


def test_the_address_comes_from_the_config_then_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(CacheConfig()) is None
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert cluster_address(CacheConfig()) == "head:6379"
    assert cluster_address(CacheConfig(ray_address="other:6379")) == "other:6379"


def test_a_missing_ray_is_refused_in_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    with pytest.raises(ConfigError, match=r"pip install 'w2s\[ray\]'") as caught:
        import_ray()
    assert "\n" not in str(caught.value)


def test_how_a_build_ran_is_not_recorded_in_its_manifest():
    recorded = recorded_config(CacheConfig(engine="ray", ray_address="head:6379", ray_actors=3))
    assert not set(RUN_ONLY) & set(recorded) and recorded == recorded_config(CacheConfig())


# --- real builds on a local Ray ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for this module's builds (its start costs seconds), shut down after them. Torch runs
    one thread meanwhile, so that each actor (which runs the driver's thread count) asks for one CPU and two fit."""
    import torch

    ray = pytest.importorskip("ray")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(micro_world, tmp_path_factory):
    """The micro world's cache split three times over (new ids): 120 rows, 10 shards of 12."""
    lines = (micro_world / "data" / "cache.jsonl").read_text().splitlines()
    rows = [{**json.loads(line), "example_id": f"r{k}-{i}"} for k in range(3) for i, line in enumerate(lines)]
    path = tmp_path_factory.mktemp("raydata") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def settings(dataset, **overrides):
    return dict(data=str(dataset), rows_per_shard=ROWS_PER_SHARD, **overrides)


@pytest.fixture(scope="module")
def clean(local_ray, micro_world, dataset, tmp_path_factory):
    """A single-process build, its folder renamed to `clean` so that Ray builds can go where it was built."""
    root = tmp_path_factory.mktemp("rayclean")
    body = build(micro_world, root / "cache", **settings(dataset))
    assert body["totals"]["rows"] == ROWS and len(body["shards"]) == ROWS // ROWS_PER_SHARD
    (root / "cache").rename(root / "clean")
    return root


def fresh(root: Path) -> Path:
    """Where each Ray build goes: the folder the clean build was made in (the manifest records out_dir), emptied."""
    shutil.rmtree(root / "cache", ignore_errors=True)
    return root / "cache"


def assert_same_store(built: Path, clean: Path) -> None:
    """The same shard files byte for byte (sha256 of each) and the same manifest (which holds no timings), but for
    the git commit in its code version: a commit made in the checkout between two builds changes it."""
    manifest, reference = (json.loads((folder / "manifest.json").read_text()) for folder in (built, clean))
    for body in (manifest, reference):
        body["provenance"]["code_version"] = body["provenance"]["code_version"].split(" (git")[0]
    assert manifest == reference
    from w2s.cache.manifest import file_entry

    for shard in manifest["shards"]:
        for entry in shard["files"].values():
            assert file_entry(built / entry["name"]) == file_entry(clean / entry["name"]) == entry
    listing = lambda root: sorted(p.relative_to(root).as_posix() for p in root.glob("*/*"))  # noqa: E731
    assert listing(built) == listing(clean)  # nothing else: no temporaries, no stray shards
    assert not any(stale_temporaries(built, index) for index in range(len(manifest["shards"])))


@pytest.mark.integration
def test_a_ray_build_is_byte_identical_and_loads_the_models_once_per_actor(
    local_ray, micro_world, dataset, clean, capsys
):
    body = run(cache_config(micro_world, fresh(clean), **settings(dataset, engine="ray", ray_actors=2)))
    assert_same_store(clean / "cache", clean / "clean")
    actors = body["ray"]["actors"]
    assert len(actors) == 2 and [a["model_loads"] for a in actors] == [1, 1]  # once per actor ...
    assert sum(a["shards"] for a in actors) == 10 and max(a["shards"] for a in actors) > 1  # ... not per shard
    assert body["ray"]["resources"] == {"num_cpus": 1, "num_gpus": 0}  # no GPU here: none asked for
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "on 2 Ray actors" in out and "models loaded 2 times in all" in out


@pytest.mark.integration
@pytest.mark.slow  # a process killed and rerun: tens of seconds; in `make test`, not `make test-fast`
def test_an_actor_killed_in_the_middle_of_a_shard_is_restarted_and_the_store_is_the_same(
    local_ray, micro_world, dataset, clean
):
    killed = []

    def kill_once(index, slot, pid):
        """Called as the first shard is recorded: its actor has had the next shard queued (two in flight per actor)
        and is scoring it by now, so kill -9 lands in the middle of that shard."""
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    config = cache_config(micro_world, fresh(clean), **settings(dataset, engine="ray", ray_actors=2))
    body = build_on_ray(setup(config, load_models=False), on_shard=kill_once)
    assert killed and body["ray"]["restarts"] >= 1 and body["scored_now"] == 10
    assert killed[0] not in {a["pid"] for a in body["ray"]["actors"]}  # the slot ended on a new process
    assert_same_store(clean / "cache", clean / "clean")


DRIVER = """
import sys
from tests.cache.helpers import cache_config
from w2s.cache.ray_engine import run_on_ray
from pathlib import Path
world, out, dataset = map(Path, sys.argv[1:4])
run_on_ray(cache_config(world, out, data=str(dataset), rows_per_shard=int(sys.argv[4]), engine="ray", ray_actors=1))
"""


@pytest.mark.integration
@pytest.mark.slow  # a process killed and rerun: tens of seconds; in `make test`, not `make test-fast`
def test_a_killed_driver_is_resumed_without_redoing_its_finished_shards(local_ray, micro_world, dataset, clean):
    out = fresh(clean)
    address = local_ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address, "OMP_NUM_THREADS": "1"}  # joins the module's Ray, one thread
    args = [sys.executable, "-c", DRIVER, str(micro_world), str(out), str(dataset), str(ROWS_PER_SHARD)]
    driver = subprocess.Popen(args, env=env, cwd=Path(__file__).parents[2], stderr=subprocess.PIPE, text=True)
    ledger, recorded, deadline = out / "ledger-00000-of-00001.json", {}, time.time() + 120
    while not recorded and driver.poll() is None and time.time() < deadline:
        time.sleep(0.02)
        if ledger.exists():
            recorded = json.loads(ledger.read_text())["shards"]
    driver.send_signal(signal.SIGKILL)
    _, err = driver.communicate()
    assert recorded and driver.returncode == -signal.SIGKILL, err[-2000:]
    assert not (out / "manifest.json").exists() and len(recorded) < 10
    kept = json.loads(ledger.read_text())["shards"]  # what the driver had recorded when it died
    config = cache_config(micro_world, out, **settings(dataset, engine="ray", ray_actors=2))
    body = build_on_ray(setup(config, load_models=False))
    assert body["scored_now"] == 10 - len(kept) and len(kept) >= 1  # finished shards were not redone
    assert_same_store(out, clean / "clean")


@pytest.mark.integration
def test_ray_data_reads_a_w2s_caches_parquet_shards(local_ray, clean):
    cache = clean / "clean"
    totals = json.loads((cache / "manifest.json").read_text())["totals"]
    rows = local_ray.data.read_parquet(str(cache / "parquet")).select_columns(["row_id", "response_len"]).take_all()
    assert len(rows) == totals["rows"] == ROWS and sorted(r["row_id"] for r in rows) == list(range(ROWS))
    assert sum(r["response_len"] for r in rows) == totals["response_tokens"]


@pytest.mark.integration
def test_a_model_an_actor_cannot_load_is_refused_in_one_line_not_a_traceback(local_ray, micro_world, dataset, tmp_path):
    """The driver saw the models (setup checks them); the actors cannot load one: the refusal comes back as is."""
    models = tmp_path / "models"
    for name in ("weak_base", "weak_aligned"):
        shutil.copytree(micro_world / name, models / name)
    config = cache_config(models, tmp_path / "cache", **settings(dataset, engine="ray", ray_actors=1))
    job = setup(config, load_models=False)
    (models / "weak_aligned" / "model.safetensors").unlink()  # gone before any actor starts
    with pytest.raises(ModelError, match="weak_aligned") as caught:
        build_on_ray(job)
    assert "\n" not in str(caught.value) and not (tmp_path / "cache" / "manifest.json").exists()

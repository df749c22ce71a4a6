"""`auto` in the cache settings on the micro world: the values used are recorded, and a build is never resumed or
reused in another dtype (as when `auto` resolves otherwise on another machine)."""

import json

import pytest

from tests.cache.helpers import build, cache_config
from w2s.cache.build import build_cache, setup
from w2s.cache.ledger import claim_folder, save_ledger
from w2s.device import CPU_BATCH_TOKENS, resolve_model_dtype
from w2s.runs import FolderRefused

pytestmark = pytest.mark.integration


def test_auto_values_are_recorded_in_the_manifest(micro_world, tmp_path):
    out = tmp_path / "auto"
    build(micro_world, out, model_dtype="auto", batch_tokens="auto", device="cpu")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["model_dtype"] == resolve_model_dtype("auto", "cpu")
    assert manifest["config"]["model_dtype"] == resolve_model_dtype("auto", "cpu")
    # the micro world's models are tiny: on a CPU the largest budget (a SmolLM2-sized model gets the smallest)
    assert manifest["config"]["batch_tokens"] == CPU_BATCH_TOKENS[1]


def test_a_build_stopped_in_another_dtype_is_not_resumed(micro_world, tmp_path):
    out = tmp_path / "mixed"
    other = setup(cache_config(micro_world, out, model_dtype="bfloat16"), load_models=False)
    with claim_folder(other):  # a bf16 build (say, auto on an AMX machine) claimed the folder and stopped here
        save_ledger(other, {})
    with pytest.raises(FolderRefused, match=r"holds another run of `w2s cache` \(model_dtype differ"):
        build_cache(setup(cache_config(micro_world, out, model_dtype="float32")))


def test_a_finished_cache_of_another_dtype_is_refused(micro_world, tmp_path):
    out = tmp_path / "done"
    build(micro_world, out, model_dtype="bfloat16")
    with pytest.raises(FolderRefused, match=r"holds another run of `w2s cache` \(model_dtype differ"):
        build_cache(setup(cache_config(micro_world, out, model_dtype="float32")))

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


def test_side_by_side_is_chosen_on_a_cpu_with_threads_to_share():
    from w2s.device import side_by_side_threads

    assert side_by_side_threads("auto", "cpu", 2, 2) == 1
    assert side_by_side_threads("auto", "cpu", 2, 16) == 8
    assert side_by_side_threads("auto", "cpu", 3, 2) == 1  # three models on two threads: one each
    assert side_by_side_threads("auto", "cpu", 2, 1) == 0  # one thread: nothing to share
    assert side_by_side_threads("auto", "cuda", 2, 16) == 0  # one device: they would only queue
    assert side_by_side_threads("auto", "cpu", 1, 16) == 0
    assert side_by_side_threads(True, "cpu", 2, 1) == 1 and side_by_side_threads(False, "cpu", 2, 16) == 0


def test_models_scored_side_by_side_write_what_they_write_in_turn(micro_world, tmp_path, monkeypatch):
    """The same stores, byte for byte, with the weak pair and the strong reference scored at once (each in its own
    thread, seen running) as in turn; the caller's torch thread count is restored."""
    import threading

    import torch

    from tests.cache.helpers import stored_columns
    from w2s.cache import backends

    seen = set()
    original = backends.TransformersScorer.response_logprobs

    def recording(self, sequences, prompt_lens):
        seen.add(threading.current_thread().name.split("_")[0])
        return original(self, sequences, prompt_lens)

    monkeypatch.setattr(backends.TransformersScorer, "response_logprobs", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build(micro_world, tmp_path / "turns", side_by_side=False, strong_ref=str(micro_world / "strong_base"))
        assert seen == {"MainThread"}
        seen.clear()
        build(micro_world, tmp_path / "side", side_by_side=True, strong_ref=str(micro_world / "strong_base"))
        assert seen == {"w2s-score"} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    stored = stored_columns(tmp_path / "side")
    assert stored and "logp_strong_ref" in next(iter(stored.values()))
    assert stored == stored_columns(tmp_path / "turns")

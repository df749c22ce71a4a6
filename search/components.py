"""The searches a system names (`generator: cbs`), one registry (`SEARCHES`, `w2s.registry`) for eval, generate
and search.

A search is a class with `params` (name -> int or float), `defaults` (a value for every param), `options` (name ->
its allowed strings, optional: left out means the first), `guided` (needs
the weak pair), `hf_only` (the reason it cannot run on vLLM, or empty), and `run(job, prompt, seed)`, which
searches one prompt with a system's job (`w2s.eval.systems.Job`: the strong sampler, the weak guide, the params
and `max_new_tokens`) and returns a `w2s.search.cbs.SearchResult`. Adding one is one new file with such a class,
decorated `@SEARCHES.register("name")`, named once by its module (a system's `generator` may also be its dotted
path). This module imports no model library: configs validate against it at load time.
"""

from __future__ import annotations

from typing import ClassVar

from w2s.registry import Registry
from w2s.search.ranking import RANKS

SEARCHES: Registry[type] = Registry("search", builtins=("w2s.search.mcts",))
"""Search classes by name: sample, cbs, bon, eft, and any registered or named by dotted path."""


class Search:
    """Base of the built-in searches: no params, unguided, any engine."""

    params: ClassVar[dict[str, type]] = {}
    defaults: ClassVar[dict[str, float]] = {}
    options: ClassVar[dict[str, tuple[str, ...]]] = {}
    """String params and their allowed values; one left out of a system's params is not set (the search's
    default, the first value, applies), so adding an option changes no existing system."""
    guided: ClassVar[bool] = False
    hf_only: ClassVar[str] = ""

    @classmethod
    def params_problem(cls, params: dict, max_new_tokens: int) -> str:
        """What makes these (checked, completed) params unable to run at this token budget, "" when nothing does:
        asked when the config loads, so a refusal comes before any folder is claimed or model loaded."""
        return ""

    def check(self, job) -> None:
        """Refuses, before anything is timed, a job this search cannot run (ValueError, with the reason)."""

    def run(self, job, prompt, seed: int):
        raise NotImplementedError


@SEARCHES.register("sample")
class Sample(Search):
    """Plain sampling from the strong model; a weak score, if any, is only reported."""

    def run(self, job, prompt, seed: int):
        from w2s.search.cbs import sample

        return sample(job.sampler, None, prompt, job.max_new_tokens, seed)


@SEARCHES.register("cbs")
class ChunkBeamSearch(Search):
    """Chunk-level beam search guided by the weak pair: W hypotheses, K samples of L tokens each (the W2S search
    paper's AlpacaEval settings by default: 2, 2, 30)."""

    params = {"width": int, "num_samples": int, "chunk_len": int}
    defaults = {"width": 2, "num_samples": 2, "chunk_len": 30}
    options = {"rank": RANKS}
    guided = True

    def run(self, job, prompt, seed: int):
        from w2s.search.cbs import chunk_beam_search

        return chunk_beam_search(
            job.sampler, job.guide.scorer, prompt, max_new_tokens=job.max_new_tokens, seed=seed, **job.params
        )


@SEARCHES.register("bon")
class BestOfN(Search):
    """Best-of-N: N plain samples, the weak pair picks one (best-of-4 by default)."""

    params = {"n": int}
    defaults = {"n": 4}
    options = {"rank": RANKS}
    guided = True

    def run(self, job, prompt, seed: int):
        from w2s.search.cbs import best_of_n

        rank = job.params.get("rank", RANKS[0])
        return best_of_n(job.sampler, job.guide.scorer, prompt, job.params["n"], job.max_new_tokens, seed, rank)


@SEARCHES.register("eft")
class EmulatedFineTuning(Search):
    """Emulated fine-tuning: strong log-probs + beta * weak log-ratio at every step (one shared vocabulary)."""

    params = {"beta": float}
    defaults = {"beta": 1.0}
    guided = True
    hf_only = "it mixes next-token distributions at every step, which vLLM does not expose"

    def check(self, job) -> None:
        from w2s.search.eft import check_same_vocab

        guide = job.guide
        check_same_vocab(job.sampler.model, (guide.tuned, guide.untuned), job.sampler.tokenizer, guide.tokenizer)

    def run(self, job, prompt, seed: int):
        from w2s.search.eft import eft_generate

        guide = job.guide
        return eft_generate(
            job.sampler, guide.tuned, guide.untuned, prompt, job.params["beta"], job.max_new_tokens, seed,
            guide.tokenizer,
        )  # fmt: skip

"""Weak-to-strong chunk beam search with the strong model sampled by vLLM (the CPU build, in .venv-vllm).

The search runs in a subprocess of .venv-vllm (`chunk_beam_search` over a `VllmSampler`, as a user runs it there),
and so does `w2s eval` with a declared cbs system on engine vllm; their results are checked here, in the main
environment, against the transformers `WeakScorer` and the strong model. Create that environment with
`bash .ci/vllm-env.sh` (about 3 minutes, once); set W2S_SKIP_VLLM=1 to skip where it cannot be had.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import vllm_program
from w2s.io import read_jsonl
from w2s.sampling import encode_prompt
from w2s.search.scorer import WeakScorer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WIDTH, SAMPLES, CHUNK, MAX_NEW, SEED = 2, 2, 4, 8, 11
ATOL = 1e-4

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from w2s.eval.config import EvalConfig, SystemConfig
    from w2s.eval.run import run
    from w2s.search.scorer import WeakScorer
    from w2s.search.cbs import chunk_beam_search
    from w2s.search.vllm_sampler import VllmSampler, make_llm

    world, prompts, width, samples, chunk, max_new, seed, out = json.loads(sys.argv[1])
    world = Path(world)
    tokenizer = AutoTokenizer.from_pretrained(world / "tokenizer")
    load = lambda name: AutoModelForCausalLM.from_pretrained(world / name).eval()
    scorer = WeakScorer(load("weak_aligned"), load("weak_base"), tokenizer)


    class Recording:
        # Passes generate() through to the engine and records what each request asked for and got back.
        def __init__(self, llm):
            self.llm, self.calls = llm, []

        def generate(self, prompts, params, **kwargs):
            outputs = self.llm.generate(prompts, params, **kwargs)
            self.calls.append([
                dict(prompt_len=len(p["prompt_token_ids"]), n=q.n, max_tokens=q.max_tokens,
                     tokens=sum(len(c.token_ids) + (c.finish_reason == "stop" and (not c.token_ids or
                                c.token_ids[-1] != tokenizer.eos_token_id)) for c in o.outputs),
                     lengths=[len(c.token_ids) for c in o.outputs])
                for p, q, o in zip(prompts, params, outputs)
            ])
            return outputs


    llm = make_llm(str(world / "strong_base"), max_len=256)
    runs = []
    for repeat in range(2):  # the same seeds twice (the second time with the prefix cache warm)
        results = []
        for index, prompt in enumerate(prompts):
            recording = Recording(llm)
            sampler = VllmSampler(recording, tokenizer)  # T=0.7, top_k=50, top_p=1.0
            r = chunk_beam_search(sampler, scorer, prompt, width, samples, chunk, max_new, seed=seed + index)
            results.append(dict(
                text=r.text, token_ids=r.token_ids, score=r.score, num_sampled=r.num_sampled,
                finished=r.finished, strong_logprob=r.strong_logprob, calls=recording.calls,
                beam=[dict(text=h.text, token_ids=h.token_ids, score=h.score, finished=h.finished,
                           strong_logprob=h.strong_logprob) for h in r.beam],
            ))
        runs.append(results)

    # `w2s eval` with a declared vLLM search: the same search as above (same seeds), through the eval API.
    search = SystemConfig("vllm_search", str(world / "strong_base"), "cbs",
                          dict(width=width, num_samples=samples, chunk_len=chunk), engine="vllm")
    config = EvalConfig(out_dir=out, task={"path": str(world / "data" / "test.jsonl")}, systems=[search],
                        weak_base=str(world / "weak_base"), weak_aligned=str(world / "weak_aligned"),
                        tokenizer=str(world / "tokenizer"), wspo_dir=str(world / "no-wspo"), gamma_sweep=False,
                        num_examples=len(prompts), max_new_tokens=max_new, seed=seed, num_shown=len(prompts))
    reports = [run(config)["systems"]["vllm_search"] for _ in range(2)]

    # `w2s search engine=vllm`: the same search once more, through the command's Python entry point.
    from w2s.eval.config import GenerateConfig, VllmOptions
    from w2s.eval.generate import run as generate
    from w2s.eval.responses import read_records
    test_set = str(world / "data" / "test.jsonl")  # a path is a prompt set with the default fields
    generate(GenerateConfig(out_dir=out + "-search", prompts=test_set, limit=len(prompts),
                            model=str(world / "strong_base"), engine="vllm", vllm=VllmOptions(max_len=256),
                            params=dict(width=width, num_samples=samples, chunk_len=chunk),
                            weak_base=str(world / "weak_base"), weak_aligned=str(world / "weak_aligned"),
                            tokenizer=str(world / "tokenizer"), max_new_tokens=max_new, seed=seed), "cbs")
    searched = [dict(output=r["output"], strong_tokens=r["strong_tokens"], weak_tokens=r["weak_tokens"])
                for r in read_records(Path(out + "-search") / "responses.jsonl")]
    print("RESULTS " + json.dumps(dict(runs=runs, eval=reports, search=searched)))
    """
)


def vllm_python() -> Path:
    """The python of .venv-vllm; fails (does not skip) when that environment is missing."""
    return vllm_program("python", "vLLM search")


@torch.no_grad()
def strong_logprob(model, tokenizer, prompt: str, token_ids: list[int], finished: bool) -> float:
    """Sum of the strong model's log-probs (temperature 1) of the response tokens, EOS included when finished."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    ids = prompt_ids + token_ids + ([tokenizer.eos_token_id] if finished else [])
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    steps = logprobs[len(prompt_ids) - 1 :].gather(-1, torch.tensor(ids[len(prompt_ids) :])[:, None])
    return float(steps.sum())


def test_vllm_chunk_beam_search_on_the_micro_world(request, tmp_path):
    python = vllm_python()  # before the micro world is built, so that a missing environment fails at once
    micro_world = request.getfixturevalue("micro_world")
    prompts = [example["prompt"] for example in read_jsonl(micro_world / "data" / "test.jsonl")[:2]]
    args = json.dumps([str(micro_world), prompts, WIDTH, SAMPLES, CHUNK, MAX_NEW, SEED, str(tmp_path / "eval")])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    proc = subprocess.run(
        [str(python), "-c", SCRIPT, args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"vLLM search failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS ") :])
    first, second = results["runs"]

    # A fixed seed gives the same search (the second run also reads the KV blocks cached by the first).
    assert first == second

    tokenizer = AutoTokenizer.from_pretrained(micro_world / "tokenizer")
    load = lambda name: AutoModelForCausalLM.from_pretrained(micro_world / name).eval()  # noqa: E731
    scorer = WeakScorer(load("weak_aligned"), load("weak_base"), tokenizer)
    strong = load("strong_base")
    for prompt, result in zip(prompts, first):
        beam = result["beam"]
        assert 1 <= len(beam) <= WIDTH
        # The result is the argmax of its beam, which is sorted best first.
        assert result["score"] == max(h["score"] for h in beam) == beam[0]["score"]
        assert [h["score"] for h in beam] == sorted((h["score"] for h in beam), reverse=True)
        assert (result["text"], result["token_ids"], result["finished"]) == (
            beam[0]["text"],
            beam[0]["token_ids"],
            beam[0]["finished"],
        )
        for hyp in beam:
            assert 0 < len(hyp["token_ids"]) <= MAX_NEW and tokenizer.eos_token_id not in hyp["token_ids"]
            assert hyp["text"] == tokenizer.decode(hyp["token_ids"], skip_special_tokens=True)
            recomputed = scorer.score(prompt, [hyp["text"]], [hyp["finished"]])[0]
            assert hyp["score"] == pytest.approx(recomputed, abs=ATOL)
            # vLLM's raw log-probs of the sampled tokens, summed over chunks, equal one transformers forward.
            expected = strong_logprob(strong, tokenizer, prompt, hyp["token_ids"], hyp["finished"])
            assert hyp["strong_logprob"] == pytest.approx(expected, abs=1e-3)

        # Sampling cost: every strong token the engine returned, EOS included, and nothing else.
        calls = result["calls"]
        prompt_len = len(encode_prompt(tokenizer, prompt))
        assert result["num_sampled"] == sum(req["tokens"] for call in calls for req in call)
        # Round 0: one request of W*K samples from the prompt; later rounds: K samples from each of at most W
        # unfinished hypotheses, each chunk min(L, budget left) tokens long.
        rounds = -(-MAX_NEW // CHUNK)
        assert 1 <= len(calls) <= rounds
        assert [(req["n"], req["max_tokens"]) for req in calls[0]] == [(WIDTH * SAMPLES, min(CHUNK, MAX_NEW))]
        bound, used = 0, 0
        for call in calls:
            length = min(CHUNK, MAX_NEW - used)
            assert len(call) <= WIDTH and all(req["max_tokens"] == length for req in call)
            assert all(req["n"] == (WIDTH * SAMPLES if used == 0 else SAMPLES) for req in call)
            assert all(0 < size <= length for req in call for size in req["lengths"])
            # each request continues one hypothesis: the rendered prompt (round 0) or it plus 1..used tokens
            grown = [req["prompt_len"] - prompt_len for req in call]
            assert grown == [0] if used == 0 else all(0 < size <= used for size in grown)
            bound += sum(req["n"] for req in call) * length
            used += length
        assert WIDTH * SAMPLES <= result["num_sampled"] <= bound <= WIDTH * SAMPLES * MAX_NEW

    # `w2s eval` ran the declared vLLM search: same responses as the search above (same seeds, same settings),
    # and the same row twice (a fixed seed gives the same eval).
    row, again = results["eval"]
    assert (row["kind"], row["engine"], row["search"]) == (
        "cbs",
        "vllm",
        dict(width=WIDTH, num_samples=SAMPLES, chunk_len=CHUNK),
    )
    assert [sample["response"] for sample in row["samples"]] == [result["text"] for result in first]
    assert row["sampled_tokens"] == sum(result["num_sampled"] for result in first) / len(first)
    assert {k: v for k, v in row.items() if k != "seconds"} == {k: v for k, v in again.items() if k != "seconds"}
    assert 0.0 <= row["length_reward"] <= 1.0 and 0.0 <= row["content"] <= 1.0

    # `w2s search engine=vllm` wrote the same responses, with their strong and weak costs.
    assert [r["output"] for r in results["search"]] == [result["text"] for result in first]
    assert [r["strong_tokens"] for r in results["search"]] == [result["num_sampled"] for result in first]
    assert all(r["weak_tokens"] > 0 for r in results["search"])

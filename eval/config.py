"""Settings of the evaluation stage: which systems to compare, on which test prompts, with which budgets."""

from __future__ import annotations

from dataclasses import dataclass, field

SYSTEMS = ("weak_base", "weak_aligned", "strong_base", "wspo", "strong_base+search", "strong_base+bon")
"""Every system `w2s eval` knows, in report order."""


@dataclass
class EvalConfig:
    """What `w2s eval` compares: the three world models, WSPO, and the strong base steered by weak-to-strong search."""

    out_dir: str = "runs/tiny/eval"
    """Output folder: report.json, report.md, comparison.png, reward_vs_gamma.png (gamma sweep only), config.yaml."""
    world_dir: str = "runs/tiny/world"
    """The world: weak_base/, weak_aligned/, strong_base/ (Hugging Face folders) and data/test.jsonl."""
    wspo_dir: str = "runs/tiny/wspo"
    """WSPO output: wspo_dir/final is the 'wspo' system; every wspo_dir/gamma-*/final feeds the reward-vs-gamma plot."""
    num_examples: int = 200
    """Test prompts evaluated (the first ones of data/test.jsonl)."""
    max_new_tokens: int = 64
    """Token budget of every response."""
    temperature: float = 0.7
    """Sampling temperature of every system (0 is greedy)."""
    top_k: int = 50
    """Top-k sampling filter (0 keeps all tokens)."""
    top_p: float = 1.0
    """Nucleus sampling filter (1.0 keeps all tokens)."""
    seed: int = 0
    """Seeds plain generation; search and BoN use seed + i for prompt i."""
    width: int = 2
    """Search W: hypotheses kept by the chunk-level beam search."""
    num_samples: int = 4
    """Search K: chunks the strong base samples from each hypothesis."""
    chunk_len: int = 8
    """Search L: tokens per sampled chunk."""
    bon_n: int = 9
    """Best-of-N N, set so that BoN samples about as many strong tokens as the search (both means are reported);
    on the tiny world W=2, K=4, L=8 draws about 204 tokens a prompt, N responses about 23 each."""
    l_min: int = 20
    """Length reward: shortest response (tokens, EOS excluded) that earns the full reward."""
    l_max: int = 30
    """Length reward: longest response that earns the full reward."""
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    """Systems to run, from: weak_base, weak_aligned, strong_base, wspo (skipped when wspo_dir/final is absent),
    strong_base+search (CBS guided by weak_aligned/weak_base), strong_base+bon."""
    gamma_sweep: bool = True
    """Also evaluate every wspo_dir/gamma-*/final (plain sampling) and plot reward and content against gamma."""
    batch_size: int = 64
    """Prompts per batch of plain generation."""
    num_shown: int = 3
    """Sample outputs per system saved in report.json (the first test prompts)."""
    threads: int = 1
    """torch CPU threads while evaluating; these tiny models run fastest on one on a shared machine."""

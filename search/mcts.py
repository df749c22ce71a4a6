"""Monte Carlo tree search over chunks (W2S-AlignTree, AAAI 2026): the weak pair's log-ratio steers a tree of the
strong model's chunks, in place of chunk-level beam search. Registered as the `mcts` search.

As the authors' public code does it (../shared/REFERENCE.md, section 7):
- one tree per prompt over the whole response, iterated from the root; a node holds a response prefix, an edge
  appends a chunk of L strong tokens; expanding a node adds K children whose first tokens are drawn without
  replacement (siblings differ), the other L-1 sampled (`SiblingSampler.sample_siblings`);
- prior P of a child: the geometric mean of its tokens' warped probabilities (`prior`); H: the entropy in bits
  of the parent's first-step distribution;
- selection from the root by PUCT, `Q + c * P * sqrt(N_parent) / (1 + N_child) * (1 + w * H_parent)` (`puct`);
- value of a new child: the weak log-ratio of its whole prefix, EOS not appended, no rollout; a child that
  ended (EOS, or `max_new_tokens` reached) is not scored during the search and its value is -inf, so it is never
  selected; backup: every node on the path gains a visit and its score becomes the max of its children's;
- final choice (`final_candidates`): not the most visited child. The internal nodes with an ended child, ranked
  by `value + c * P * sqrt(N_parent) / (1 + N)`, the top `finalists` kept; their ended children are scored as
  whole responses (EOS appended where the strong model sampled it, as CBS scores), the others keep their value;
  the best is returned.

Where we differ from that code, and why:
- the budget is strong tokens, not iterations: a node is expanded only while K * L more tokens fit, so the search
  never samples more than `budget` (K*L*m for the authors' m iterations: 1200 for K=3, L=4, m=100);
- its code appends EOS to every child of a finalist, scoring a cut-off sibling as if it had ended; we append EOS
  only to children that sampled it (a child cut at `max_new_tokens` is scored as it stands);
- the root, which has no parent to rank it by, is ranked with its own visits as the parent's and P = 1 (the code
  skips it, so a tree of one level had no finalist);
- a node whose children have all ended (or are themselves spent) is spent: selection passes it by, and the search
  stops early when the root is spent (the code would spend its remaining iterations revisiting it);
- no node ended before the budget ran out: the node of highest value (deepest on ties) is returned unfinished,
  with the score it was selected by (the code returns the best child of that node's parent: the same response);
- prefixes come from the sampler's KV rows where it holds them (`HFSampler`), not recomputed from the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from w2s.search.components import SEARCHES, Search

PAPER_DEFAULTS = {"num_children": 3, "chunk_len": 4, "budget": 1200, "c": 1.5, "w": 0.2, "finalists": 10}
"""The authors' summarisation script: K=3 children of L=4 tokens, m=100 iterations (K*L*m = 1200 strong tokens),
c=1.5, entropy weight w=0.2, top 10 finalists (with their temperature 0.7 and top-k 50, the samplers' default)."""


def puct(q: float, prior_p: float, parent_visits: int, visits: int, parent_entropy: float, c: float, w: float) -> float:
    """The selection score of a child: Q + c * P * sqrt(N_parent) / (1 + N_child) * (1 + w * H_parent)."""
    return q + c * prior_p * math.sqrt(parent_visits) / (1 + visits) * (1 + w * parent_entropy)


def prior(warped_logprob: float, tokens: int) -> float:
    """P of a child: the geometric mean of its tokens' warped probabilities (exp of their mean log-prob)."""
    return math.exp(warped_logprob / tokens)


@dataclass(eq=False)
class Node:
    """A response prefix in the tree."""

    token_ids: list[int]
    """Strong response tokens so far, EOS excluded."""
    text: str
    prior: float = 1.0
    parent: Node | None = None
    ended_by_eos: bool = False
    terminal: bool = False
    """Ended: EOS sampled or `max_new_tokens` reached; never expanded."""
    strong_logprob: float = 0.0
    value: float = 0.0
    """Weak log-ratio of the prefix (no EOS); -inf for a terminal node (not scored during the search)."""
    score: float = 0.0
    """Q: the value until expanded, then the max of the children's scores."""
    visits: int = 0
    entropy: float = 0.0
    """Bits, of the node's first-step distribution (set when it is expanded)."""
    children: list[Node] = field(default_factory=list)
    spent: bool = False
    """Terminal, or every child spent: selection passes it by."""

    def walk(self):
        """This node and every node below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class TreeSettings:
    """The knobs of one search (see `PAPER_DEFAULTS`)."""

    num_children: int = 3
    chunk_len: int = 4
    budget: int = 1200
    c: float = 1.5
    w: float = 0.2
    finalists: int = 10
    max_new_tokens: int = 128


def select_path(root: Node, settings: TreeSettings) -> list[Node]:
    """From the root down to a leaf, each step to the live child of highest `puct` (the first on ties)."""
    path = [root]
    while path[-1].children:
        node = path[-1]
        live = [child for child in node.children if not child.spent]
        path.append(max(live, key=lambda ch: puct(ch.score, ch.prior, node.visits, ch.visits, node.entropy,
                                                    settings.c, settings.w)))  # fmt: skip
    return path


def expand(sampler, scorer, prompt, node: Node, settings: TreeSettings) -> int:
    """Adds the node's children and values them; returns the strong tokens sampled."""
    length = min(settings.chunk_len, settings.max_new_tokens - len(node.token_ids))
    drawn = sampler.sample_siblings(node.token_ids, settings.num_children, length)
    node.entropy = drawn.entropy_bits
    for chunk, logprob, warped in zip(drawn.chunks, drawn.logprobs, drawn.warped_logprobs):
        eos = chunk[-1] == sampler.eos_id
        ids = node.token_ids + (chunk[:-1] if eos else chunk)
        text = sampler.tokenizer.decode(ids, skip_special_tokens=True)
        terminal = eos or len(ids) >= settings.max_new_tokens
        child = Node(ids, text, prior(warped, len(chunk)), node, eos, terminal, node.strong_logprob + logprob)
        child.visits, child.spent = 1, terminal
        node.children.append(child)
    live = [child for child in node.children if not child.terminal]
    values = scorer.score(prompt, [child.text for child in live], [False] * len(live)) if live else []
    for child in node.children:
        child.value = child.score = -math.inf
    for child, value in zip(live, values):
        child.value = child.score = value
    return sum(len(chunk) for chunk in drawn.chunks)


def backup(path: list[Node]) -> None:
    """Every node on the path gains a visit; an expanded node's score becomes its children's max."""
    for node in reversed(path):
        node.visits += 1
        if node.children:
            node.score = max(child.score for child in node.children)
            node.spent = node.terminal or all(child.spent for child in node.children)


def final_candidates(root: Node, scorer, prompt, settings: TreeSettings) -> list[Node]:
    """The responses the search chooses from, best first, each node's `score` set to what it is ranked by.

    The internal nodes with an ended child, ranked by value + c * P * sqrt(N_parent) / (1 + N), top `finalists`
    kept; their ended children scored as whole responses, the others ranked by their value. Without an ended
    node: every node but the root, by value (deepest first on ties), unfinished.
    """
    internal = [node for node in root.walk() if any(child.terminal for child in node.children)]
    if not internal:
        nodes = [node for node in root.walk() if node is not root]
        for node in nodes:
            node.score = node.value
        return sorted(nodes, key=lambda node: (-node.value, -len(node.token_ids)))

    def rank(node: Node) -> float:
        parent_visits = node.parent.visits if node.parent is not None else node.visits
        return node.value + settings.c * node.prior * math.sqrt(parent_visits) / (1 + node.visits)

    kept = sorted(internal, key=lambda node: -rank(node))[: settings.finalists]
    candidates = [child for node in kept for child in node.children]
    ended = [child for child in candidates if child.terminal]
    for child, value in zip(ended, scorer.score(prompt, [c.text for c in ended], [c.ended_by_eos for c in ended])):
        child.score = value
    for child in candidates:
        if not child.terminal:
            child.score = child.value
    return sorted(candidates, key=lambda node: -node.score)


def grow_tree(sampler, scorer, prompt, settings: TreeSettings, seed: int = 0) -> tuple[Node, int]:
    """Selection, expansion, value and backup from the root until the budget cannot pay for the next expansion
    or the whole tree is spent; returns the root and the strong tokens sampled."""
    from w2s.sampling import encode_prompt

    check_settings(sampler, settings)
    sampler.begin(encode_prompt(sampler.tokenizer, prompt), seed)
    root, sampled = Node([], ""), 0
    while not root.spent:
        path = select_path(root, settings)
        length = min(settings.chunk_len, settings.max_new_tokens - len(path[-1].token_ids))
        if sampled + settings.num_children * length > settings.budget:
            break
        sampled += expand(sampler, scorer, prompt, path[-1], settings)
        backup(path)
    return root, sampled


def tree_search(sampler, scorer, prompt, settings: TreeSettings, seed: int = 0):
    """MCTS over chunks of one prompt (see the module docstring); returns a `SearchResult` whose `beam` holds the
    final candidates, best first."""
    from w2s.search.cbs import Hypothesis, beam_result, weak_counts

    weak_before = weak_counts(scorer)
    root, sampled = grow_tree(sampler, scorer, prompt, settings, seed)
    finals = final_candidates(root, scorer, prompt, settings)
    beam = [Hypothesis(n.token_ids, n.text, n.ended_by_eos, n.score, n.strong_logprob) for n in finals]
    return beam_result(beam, sampled, scorer, weak_before)


def check_settings(sampler, settings: TreeSettings) -> None:
    """Refuses (ValueError, one line) a sampler without sibling draws or knobs that cannot search."""
    if not callable(getattr(sampler, "sample_siblings", None)):
        raise ValueError(
            f"mcts draws sibling first tokens without replacement, which {type(sampler).__name__} cannot "
            "(it exposes no next-token distribution): use engine hf"
        )
    problem = settings_problem(settings)
    if problem:
        raise ValueError(f"mcts: {problem}")


def settings_problem(settings: TreeSettings) -> str:
    """What makes these knobs unable to search ("" when nothing does): checked when the config loads, before a
    folder is claimed or a model loads, and again when the job is built."""
    if min(settings.num_children, settings.chunk_len, settings.finalists, settings.max_new_tokens) < 1:
        return "num_children, chunk_len, finalists and max_new_tokens must be >= 1"
    if not (math.isfinite(settings.c) and math.isfinite(settings.w) and settings.c >= 0 and settings.w >= 0):
        return f"c and w must be finite and >= 0, got c={settings.c}, w={settings.w}"
    first = settings.num_children * min(settings.chunk_len, settings.max_new_tokens)
    if settings.budget < first:
        return (
            f"budget {settings.budget} strong tokens cannot pay for the root's expansion "
            f"(num_children * chunk_len = {first}); raise budget"
        )
    return ""


@SEARCHES.register("mcts")
class MonteCarloTreeSearch(Search):
    """Monte Carlo tree search over chunks (W2S-AlignTree) guided by the weak pair: K children of L tokens per
    expansion, PUCT with entropy, max backup, until `budget` strong tokens are sampled (the authors'
    summarisation setting by default: K=3, L=4, 100 iterations = 1200 tokens, c=1.5, w=0.2, 10 finalists)."""

    params = {"num_children": int, "chunk_len": int, "budget": int, "c": float, "w": float, "finalists": int}
    defaults = dict(PAPER_DEFAULTS)
    guided = True
    hf_only = "it draws sibling first tokens without replacement from a next-token distribution vLLM does not expose"

    @classmethod
    def params_problem(cls, params: dict, max_new_tokens: int) -> str:
        return settings_problem(TreeSettings(**params, max_new_tokens=max_new_tokens))

    def check(self, job) -> None:
        check_settings(job.sampler, TreeSettings(**job.params, max_new_tokens=job.max_new_tokens))

    def run(self, job, prompt, seed: int):
        settings = TreeSettings(**job.params, max_new_tokens=job.max_new_tokens)
        return tree_search(job.sampler, job.guide.scorer, prompt, settings, seed)

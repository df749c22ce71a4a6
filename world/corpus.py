"""The tiny world's synthetic summarisation corpus.

Each document reports a handful of key facts ("mira sold 7 lamps in oslo .") mixed with filler sentences that
carry no facts. A reference summary restates some of the facts, in document order, as clauses joined by " ; ".
The number of facts a summary keeps is drawn uniformly, so summaries run from one clause (about 7 tokens, well
under L_min = 20) to all of them (up to about 50 tokens, well over L_max = 30): the same spread of lengths the
paper's XSUM length experiment works on. Every fact is a closed record, so `w2s.world.metrics` can check what a
generated summary gets right.

Every summary ends with a remark of `TONE_WORDS` words ("overall glad grim proud ."), each drawn positive or
negative with even odds and independently of the document: a style the document does not determine, which the
second task (`w2s.world.task.ToneTask`, the W2S search paper's controlled-sentiment experiment in miniature)
rewards when it is positive.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

NAMES = (
    "mira tor ada ben cleo dan eva finn gus hana ivo jade kai lena milo nora otto pia quin rosa sami tess uma vic"
).split()
VERBS = "bought sold painted found carried repaired lost shipped".split()
ITEMS = "lamps cups boats chairs books bells coats drums kites maps rings tents vases wheels baskets candles".split()
CITIES = "oslo rome lima cairo paris delhi quito seoul perth tunis kyiv dakar hanoi riga porto bern".split()
COUNTS = tuple(str(n) for n in range(2, 20))
FILLERS = (
    "the weather was {adj} .",
    "the market was {adj} that day .",
    "many people came to watch .",
    "it was a {adj} week .",
    "the roads were {adj} .",
)
ADJECTIVES = "mild busy quiet cold warm long".split()
PROMPT_PREFIX = "summarize : "
REMARK = "overall"
"""The word that opens a summary's closing remark (the tone words follow it)."""
POSITIVE = "bright glad kind lucky proud merry".split()
NEGATIVE = "grim dull sad harsh gloomy bitter".split()
TONE_WORDS = 3
"""Tone words in a reference summary's remark."""


@dataclass(frozen=True)
class Fact:
    """One key fact of a document: who did what to how many of which thing, and where."""

    name: str
    verb: str
    count: str
    item: str
    city: str

    def clause(self) -> str:
        return f"{self.name} {self.verb} {self.count} {self.item} in {self.city}"


def parse_clause(text: str) -> Fact | None:
    """Reads one summary clause back into a Fact; None when it is not of the form the world uses."""
    words = text.split()
    if len(words) != 6 or words[4] != "in":
        return None
    return Fact(name=words[0], verb=words[1], count=words[2], item=words[3], city=words[5])


def render_summary(facts: list[Fact], tone: list[str] | None = None) -> str:
    """The facts as clauses joined by " ; ", then (when given) the remark: "overall <tone words> ."."""
    text = " ; ".join(fact.clause() for fact in facts) + " ."
    return text + (f" {REMARK} {' '.join(tone)} ." if tone else "")


def split_remark(text: str) -> tuple[str, str]:
    """(the facts part, the remark) of a summary; the remark starts at the first word `overall` ("" if none)."""
    words = text.split()
    cut = words.index(REMARK) if REMARK in words else len(words)
    return " ".join(words[:cut]), " ".join(words[cut:])


def parse_summary(text: str) -> list[Fact | None]:
    """Splits a summary's facts part (the remark left out) into clauses; each is a Fact, or None if malformed."""
    body = split_remark(text)[0].strip()
    if body.endswith("."):
        body = body[:-1]
    return [parse_clause(part) for part in body.split(";") if part.strip()]


def _sample_facts(rng: random.Random, num_facts: int) -> list[Fact]:
    """Draws facts whose fields never repeat within a document.

    Distinct values make every field follow a unique word of its fact, so copying a fact is plain induction
    (find the previous word, copy the next), which a two-layer model learns quickly and a one-layer model cannot.
    """
    columns = [rng.sample(pool, num_facts) for pool in (NAMES, VERBS, COUNTS, ITEMS, CITIES)]
    return [Fact(*values) for values in zip(*columns)]


def sample_example(rng: random.Random, example_id: str, min_facts: int, max_facts: int) -> dict:
    """Draws one (document, reference summary) example.

    Args:
        rng: the only source of randomness, so a seed fixes the example.
        example_id: stable id stored with the example.
        min_facts: fewest key facts a document reports.
        max_facts: most key facts a document reports.

    Returns:
        A dict with `example_id`, `prompt` (the instruction and document), `response` (the reference summary),
        `facts` (the document's key facts as dicts, in order), `num_summary_facts` and `tone` (the remark's
        words).
    """
    num_facts = rng.randint(min_facts, max_facts)
    facts = _sample_facts(rng, num_facts)
    sentences = [fact.clause() + " ." for fact in facts]
    for _ in range(rng.randint(1, 3)):
        filler = rng.choice(FILLERS).format(adj=rng.choice(ADJECTIVES))
        sentences.insert(rng.randint(0, len(sentences)), filler)
    kept = sorted(rng.sample(range(num_facts), rng.randint(1, num_facts)))
    tone = [rng.choice(POSITIVE if rng.random() < 0.5 else NEGATIVE) for _ in range(TONE_WORDS)]
    return {
        "example_id": example_id,
        "prompt": PROMPT_PREFIX + " ".join(sentences),
        "response": render_summary([facts[i] for i in kept], tone),
        "facts": [asdict(fact) for fact in facts],
        "num_summary_facts": len(kept),
        "tone": tone,
    }


def document_facts(example: dict) -> list[Fact]:
    return [Fact(**fact) for fact in example["facts"]]


def build_splits(seed: int, sizes: dict[str, int], min_facts: int, max_facts: int) -> dict[str, list[dict]]:
    """Draws every split from one seeded generator, in a fixed split order, so a seed fixes the corpus."""
    rng = random.Random(seed)
    return {
        split: [sample_example(rng, f"{split}-{i:06d}", min_facts, max_facts) for i in range(size)]
        for split, size in sizes.items()
    }

"""Settings of the tiny world: corpus sizes, model shapes and training budgets."""

from __future__ import annotations

from dataclasses import dataclass, field

from w2s.config import require, require_finite, require_seed
from w2s.world.corpus import CITIES, COUNTS, ITEMS, NAMES, VERBS

MAX_FACTS = min(len(pool) for pool in (NAMES, VERBS, COUNTS, ITEMS, CITIES))
"""Most key facts a document can hold: the facts of one document never share a name, verb, count, item or city."""
MIN_VOCAB = 256 + 3
"""The smallest vocabulary: the 256 byte symbols and the 3 special tokens (EOS and the two chat markers)."""
MAX_VOCAB = 65536
"""A cap on world.vocab_size: the BPE trainer reserves memory in proportion to it (10**9 asks for ~70 GB), while
the corpus holds a few hundred tokens."""


@dataclass
class ModelShape:
    """Shape and training budget of one of the world's causal LMs (a Llama architecture)."""

    hidden_size: int = 64
    """Width of the residual stream; attention heads are 64 wide, so heads = hidden_size / 64."""
    num_layers: int = 1
    """Transformer blocks. One block cannot form an induction head, which is what keeps the weak model weak at
    copying facts."""
    steps: int = 300
    """Optimiser steps of supervised training on the train split."""
    lr: float = 3e-3
    """Peak learning rate (10% warm-up, then cosine)."""

    def __post_init__(self) -> None:
        # `world.*`: from_dict names the model (world.weak, world.strong) in place of the star
        require(
            self.hidden_size >= 64 and self.hidden_size % 64 == 0,
            "world.*.hidden_size",
            f"must be a positive multiple of 64 (heads are 64 wide), got {self.hidden_size}",
        )
        require(self.num_layers >= 1, "world.*.num_layers", f"must be at least 1, got {self.num_layers}")
        require(self.steps >= 1, "world.*.steps", f"must be at least 1, got {self.steps}")
        require_finite(self.lr, "world.*.lr", positive=True)


@dataclass
class WorldConfig:
    """The embedded default tasks: a synthetic summarisation corpus, one tokenizer and six small models."""

    out_dir: str = "{run_root}/world"
    """Where the world is written: data/, tokenizer/, weak_base/, weak_aligned/, strong_base/, world.json."""
    seed: int = 0
    """Fixes the corpus, the tokenizer and every model's weights."""
    num_train: int = 4000
    """Examples for supervised training of the weak and strong bases."""
    num_align: int = 4000
    """Examples the weak aligned model is drawn from (only those whose summary earns the full length reward)."""
    num_cache: int = 1000
    """Examples for WSPO: the prompts and responses the logit cache scores."""
    num_test: int = 200
    """Held-out examples for evaluation."""
    num_val: int = 200
    """Held-out examples for selection (WSPO's gamma and any other knob), drawn after the test split; selection
    never looks at the test split."""
    min_facts: int = 3
    """Fewest key facts in a document."""
    max_facts: int = 6
    """Most key facts in a document; a summary keeps between one and all of them."""
    vocab_size: int = 512
    """Size of the shared BPE vocabulary, in [259, 65536] (the 256 bytes and 3 special tokens at least); the build
    refuses one the training split cannot fill, or one so small that an example outgrows the models' 256 tokens."""
    l_min: int = 20
    """Length reward: shortest summary (in tokens, EOS excluded) that earns the full reward."""
    l_max: int = 30
    """Length reward: longest summary that earns the full reward."""
    batch_size: int = 32
    """Examples per optimiser step for all three models."""
    weak: ModelShape = field(default_factory=lambda: ModelShape(hidden_size=64, num_layers=1, steps=300, lr=3e-3))
    """The weak base (and, after alignment, the weak aligned model)."""
    strong: ModelShape = field(default_factory=lambda: ModelShape(hidden_size=128, num_layers=2, steps=1200, lr=3e-3))
    """The strong base: wider and deeper, so it learns to copy facts from the document."""
    align_steps: int = 150
    """Steps of reward-filtered fine-tuning that turn the weak base into the weak aligned model."""
    align_lr: float = 1e-3
    """Peak learning rate of that fine-tuning."""
    align_mix: float = 0.5
    """Share of reward-filtered examples in each weak aligned model's fine-tuning data; the rest are unfiltered
    examples of the align split, so the weak model is clearly but only partly aligned (1.0: fully)."""
    sft_steps: int = 200
    """Steps of supervised fine-tuning of the strong base on a task's reward-filtered data (the SFT ceiling:
    the strong model aligned directly on the data the weak model was aligned with)."""
    sft_lr: float = 5e-4
    """Peak learning rate of the SFT ceiling."""
    eval_examples: int = 200
    """Test examples the post-build metrics table generates for (at most num_test)."""
    threads: int = 2
    """torch CPU threads; fixed so that the weights are bit-identical from one build to the next."""

    def split_sizes(self) -> dict[str, int]:
        """Examples per split, in the order the corpus draws them (val last, so that the earlier splits are those
        of a world without it): the order is part of what a seed means."""
        return {
            "train": self.num_train,
            "align": self.num_align,
            "cache": self.num_cache,
            "test": self.num_test,
            "val": self.num_val,
        }

    def __post_init__(self) -> None:
        sizes = (
            "num_train",
            "num_align",
            "num_cache",
            "num_test",
            "min_facts",
            "batch_size",
            "num_val",
            "align_steps",
            "sft_steps",
            "eval_examples",
            "threads",
        )
        for key in sizes:
            require(getattr(self, key) >= 1, f"world.{key}", f"must be at least 1, got {getattr(self, key)}")
        require(self.min_facts <= self.max_facts, "world.max_facts", f"must be >= min_facts={self.min_facts}")
        require(
            self.max_facts <= MAX_FACTS,
            "world.max_facts",
            f"must be at most {MAX_FACTS} (a document's facts never share a verb, and there are {MAX_FACTS}), "
            f"got {self.max_facts}",
        )
        require_seed(self.seed, "world.seed")
        require(
            MIN_VOCAB <= self.vocab_size <= MAX_VOCAB,
            "world.vocab_size",
            f"must be in [{MIN_VOCAB}, {MAX_VOCAB}] (the 256 byte symbols and 3 special tokens at least), "
            f"got {self.vocab_size}",
        )
        require(self.l_min >= 0, "world.l_min", f"must be >= 0, got {self.l_min}")
        require(self.l_min <= self.l_max, "world.l_max", f"must be >= l_min={self.l_min}, got {self.l_max}")
        require_finite(self.align_lr, "world.align_lr", positive=True)
        require_finite(self.sft_lr, "world.sft_lr", positive=True)
        require_finite(self.align_mix, "world.align_mix", positive=True)
        require(self.align_mix <= 1, "world.align_mix", f"must be in (0, 1], got {self.align_mix}")

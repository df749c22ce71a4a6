"""Random-initialised models with real vocabulary sizes, for the big-vocabulary benchmarks (nothing is downloaded).

`qwen2_shaped(vocab, hidden, layers)` is Qwen2's architecture and vocabulary size (151,936) at a small width, so
that the output layer, not the body, dominates memory, as it does for real models at long sequence lengths.
`save_model(folder, ...)` writes it as a Hugging Face folder with a word-level tokenizer covering every id, so
that vLLM (which checks prompt ids against the tokenizer) can load it too.
"""

from __future__ import annotations

import random
from pathlib import Path

QWEN2_VOCAB = 151_936


def qwen2_shaped(vocab: int = QWEN2_VOCAB, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A random `Qwen2ForCausalLM` (float32, eval mode) with Qwen2's config shape at width `hidden`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )
    return Qwen2ForCausalLM(config).eval()


def save_model(folder: Path, vocab: int = QWEN2_VOCAB, hidden: int = 64, layers: int = 2) -> Path:
    """Writes a random Qwen2-shaped model and a word-level tokenizer of `vocab` tokens into `folder`."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    qwen2_shaped(vocab, hidden, layers).save_pretrained(folder)
    words = models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t2")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(words), bos_token="t0", eos_token="t1")
    tokenizer.pad_token = "t1"
    tokenizer.save_pretrained(folder)
    return folder


def random_rows(
    rows: int, vocab: int, prompt_share: float, length: tuple[int, int] = (96, 256), seed: int = 0
) -> tuple[list[list[int]], list[int]]:
    """`rows` random token sequences with lengths in `length` and about `prompt_share` of each one prompt."""
    rng = random.Random(seed)
    sequences, prompt_lens = [], []
    for _ in range(rows):
        n = rng.randint(*length)
        sequences.append([rng.randrange(2, vocab) for _ in range(n)])
        prompt_lens.append(min(n - 1, max(1, round(prompt_share * n))))
    return sequences, prompt_lens

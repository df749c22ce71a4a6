"""The tiny world's tokenizer: a byte-level BPE trained offline with `tokenizers`, shared by all three models.

It is saved as an ordinary Hugging Face tokenizer folder with a chat template, so every stage loads it through
`AutoTokenizer.from_pretrained` exactly as it would load a hub model's tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from w2s.errors import ConfigError
from w2s.tokens import render_chat_prompt
from w2s.world.config import WorldConfig
from w2s.world.corpus import build_splits
from w2s.world.metrics import tone_reward

EOS = "<|endoftext|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"

# The response is everything after the assistant marker; it ends with EOS, which is scored like any token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE on `texts` and wraps it as a Hugging Face fast tokenizer.

    Args:
        texts: the training text (documents and summaries).
        vocab_size: size of the vocabulary, special tokens and the 256 byte symbols included.

    Returns:
        A tokenizer with EOS (also used as padding), the chat markers and the world's chat template.
    """
    bpe = Tokenizer(models.BPE())
    # add_prefix_space: a word is the same token at the start of a prompt, a response or mid-sentence,
    # which is what lets a model copy a fact from the document into the summary token by token.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, pad_token=EOS, additional_special_tokens=[USER, ASSISTANT]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def render_prompt(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    """The prompt as the models see it: the chat template with the generation marker appended."""
    return render_chat_prompt(tokenizer, prompt)


def training_texts(examples: Iterable[dict]) -> Iterable[str]:
    """What the tokenizer is trained on: each example's prompt and response, as `w2s.world.build` hands them."""
    return (example["prompt"] + " " + example["response"] for example in examples)


def check_corpus(config: WorldConfig, max_len: int) -> None:
    """Refuses, before the build writes anything, a world config its corpus cannot honour: a world.vocab_size
    larger than the training split can fill (the tokenizer would silently be smaller) or so small that some example
    takes more than `max_len` tokens (the models' context), or lengths (world.l_min, l_max) or an align split that
    leave a task with no reward-filtered example to align on. Draws the corpus and trains the tokenizer as the
    build does (a few seconds at the default sizes)."""
    splits = build_splits(config.seed, config.split_sizes(), config.min_facts, config.max_facts)
    tokenizer = train_tokenizer(training_texts(splits["train"]), config.vocab_size)
    if len(tokenizer) < config.vocab_size:
        raise ConfigError(
            f"world.vocab_size: the {config.num_train} training examples fill only {len(tokenizer)} tokens, not "
            f"{config.vocab_size}: set world.vocab_size to at most {len(tokenizer)}"
        )
    examples = [example for rows in splits.values() for example in rows]
    prompts = tokenizer([render_prompt(tokenizer, ex["prompt"]) for ex in examples], add_special_tokens=False)
    responses = tokenizer([ex["response"] for ex in examples], add_special_tokens=False)["input_ids"]
    # as `w2s.tokens.encode_example` counts: rendered prompt + response + EOS
    lengths = [len(p) + len(r) + 1 for p, r in zip(prompts["input_ids"], responses)]
    longest = max(range(len(examples)), key=lengths.__getitem__)
    if lengths[longest] > max_len:
        raise ConfigError(
            f"world.vocab_size: with {config.vocab_size} tokens, example {examples[longest]['example_id']} takes "
            f"{lengths[longest]} tokens, more than the {max_len} the models hold: raise world.vocab_size (or "
            f"lower world.max_facts={config.max_facts})"
        )
    _check_filtered(config, splits["align"], responses[config.num_train : config.num_train + config.num_align])


def _check_filtered(config: WorldConfig, align: list[dict], lengths: list[list[int]]) -> None:
    """Refuses a task whose reward-filtered align data is empty: its weak aligned model would train on nothing.
    `lengths`: the align responses' token ids (the length reward counts them, EOS excluded)."""
    in_range = [config.l_min <= len(ids) <= config.l_max for ids in lengths]
    if not any(in_range):
        shortest, longest = min(map(len, lengths)), max(map(len, lengths))
        raise ConfigError(
            f"world.l_min/l_max: no reference summary of the {len(align)} align examples is {config.l_min} to "
            f"{config.l_max} tokens long (they run from {shortest} to {longest}): set a range that overlaps them"
        )
    if not any(tone_reward(ex["response"]) == 1.0 for ex in align):
        raise ConfigError(
            f"world.num_align: none of the {len(align)} align examples has a fully positive remark, so the tone "
            "task has nothing to align on: raise world.num_align (about one example in eight has one)"
        )

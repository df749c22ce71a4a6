"""The tiny world's tokenizer: a byte-level BPE trained offline with `tokenizers`, shared by all three models.

It is saved as an ordinary Hugging Face tokenizer folder with a chat template, so every stage loads it through
`AutoTokenizer.from_pretrained` exactly as it would load a hub model's tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from w2s.tokens import render_chat_prompt

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

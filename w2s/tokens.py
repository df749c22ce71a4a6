"""How every stage turns (prompt, response) text into the token ids that are scored and trained on.

One function, used by the world builder, the cache and the trainer's start-up check, so that the ids the weak
pair scored are exactly the ids the strong model is trained on. The prompt is rendered through the tokenizer's
chat template (with the generation marker) when it has one; the response is tokenised on its own, without
special tokens, and ends with EOS, which is scored like any other token.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


class EncodingError(ValueError):
    """An example that cannot be encoded; the message says which field and why."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    """Prompt followed by response (and EOS unless the response was truncated)."""
    prompt_len: int
    """Tokens of the rendered prompt."""
    truncated: bool
    """True when the response was cut to fit `max_len` (no EOS then: the response did not end)."""


def render_chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], use_chat_template: bool = True) -> str:
    """The prompt as the model sees it: a user turn (or a list of messages) plus the assistant marker."""
    if not use_chat_template or not getattr(tokenizer, "chat_template", None):
        if not isinstance(prompt, str):
            raise EncodingError("chat messages need a tokenizer with a chat template")
        return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    response: str,
    max_len: int,
    truncate: bool = False,
    use_chat_template: bool = True,
) -> Encoded:
    """Tokenises one example as rendered prompt + response + EOS.

    Args:
        tokenizer: the shared tokenizer.
        prompt: the user prompt, or the chat messages before the response.
        response: the response text; must not be empty.
        max_len: most tokens of prompt + response (+ EOS).
        truncate: cut the response to fit instead of refusing the example.
        use_chat_template: render the prompt with the tokenizer's chat template.

    Raises:
        EncodingError: an empty response, a prompt that leaves no room for the response, or (without
            `truncate`) an example longer than `max_len`; the message names the field.
    """
    if not response.strip():
        raise EncodingError("field 'response' is empty")
    prompt_ids = tokenizer(render_chat_prompt(tokenizer, prompt, use_chat_template), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_len:
        raise EncodingError(f"field 'prompt' takes {len(prompt_ids)} tokens, leaving no room for the response within max_len={max_len}")
    total = len(prompt_ids) + len(response_ids)
    if total > max_len and not truncate:
        raise EncodingError(f"prompt + response take {total} tokens > max_len={max_len} (set truncation to cut the response)")
    truncated = total > max_len
    if truncated:
        response_ids = response_ids[: max_len - len(prompt_ids)]
    return Encoded(prompt_ids + response_ids, len(prompt_ids), truncated)

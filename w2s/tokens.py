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


def render_chat_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    use_chat_template: bool = True,
    field: str | None = None,
) -> str:
    """The prompt as the model sees it: a user turn (or a list of messages) plus the assistant marker.

    Args:
        field: the prompt's field in the dataset, for messages (default 'prompt' for text, 'messages' for messages).

    Raises:
        EncodingError: an empty prompt, or a chat template that fails on the messages or drops one.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    field = field or ("prompt" if isinstance(prompt, str) else "messages")
    if not any(message["content"].strip() for message in messages):
        raise EncodingError(
            f"field '{field}' is empty"
            if isinstance(prompt, str)
            else f"field '{field}': no message before the response has any content"
        )
    if not use_chat_template or not getattr(tokenizer, "chat_template", None):
        if not isinstance(prompt, str):
            raise EncodingError(f"field '{field}': chat messages need a tokenizer with a chat template")
        return prompt
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # jinja's TemplateError, or the template's own raise_exception: the same user mistake
        why = " ".join(str(err).split())
        raise EncodingError(f"field '{field}': the chat template refuses these messages: {why}") from err
    check_rendered(messages, rendered, field if isinstance(prompt, list) else None, field)
    return rendered


def check_rendered(messages: list[dict], rendered: str, list_field: str | None, field: str) -> None:
    """Refuses a rendering that lost a message. A template renders only the roles it knows (many drop 'system' or
    an unknown 'tool' without a word), and a dropped message would leave the scored prompt shorter than the data
    says. So each message's content (trimmed, as templates often do) must appear in the rendered text, in order.

    Args:
        list_field: the messages' field when the prompt came as messages (named with the message's index);
            None for a text prompt (named as `field`).
    """
    cursor = 0
    for index, message in enumerate(messages):
        content = message["content"].strip()
        found = rendered.find(content, cursor)
        if found < 0:
            name = f"{list_field}[{index}]" if list_field else field
            raise EncodingError(
                f"field '{name}': the chat template does not render role {message['role']!r} "
                "(the message's content is missing from the rendered prompt)"
            )
        cursor = found + len(content)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    response: str,
    max_len: int,
    truncate: bool = False,
    use_chat_template: bool = True,
    prompt_field: str | None = None,
) -> Encoded:
    """Tokenises one example as rendered prompt + response + EOS.

    Args:
        tokenizer: the shared tokenizer.
        prompt: the user prompt, or the chat messages before the response.
        response: the response text; must not be empty.
        max_len: most tokens of prompt + response (+ EOS).
        truncate: cut the response to fit instead of refusing the example.
        use_chat_template: render the prompt with the tokenizer's chat template.
        prompt_field: the prompt's field in the dataset, for messages (default 'prompt' or 'messages').

    Raises:
        EncodingError: an empty response, an empty prompt or one the chat template does not fully render, a
            prompt that leaves no room for the response, or (without `truncate`) an example longer than `max_len`;
            the message names the field.
    """
    if not response.strip():
        raise EncodingError("field 'response' is empty")
    rendered = render_chat_prompt(tokenizer, prompt, use_chat_template, prompt_field)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_len:
        raise EncodingError(
            f"field '{prompt_field or 'prompt'}' takes {len(prompt_ids)} tokens, leaving no room for "
            f"the response within max_len={max_len}"
        )
    total = len(prompt_ids) + len(response_ids)
    if total > max_len and not truncate:
        raise EncodingError(
            f"prompt + response take {total} tokens > max_len={max_len} (set truncation to cut the response)"
        )
    truncated = total > max_len
    if truncated:
        response_ids = response_ids[: max_len - len(prompt_ids)]
    return Encoded(prompt_ids + response_ids, len(prompt_ids), truncated)

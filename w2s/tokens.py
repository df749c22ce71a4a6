"""How every stage turns (prompt, response) text into the token ids that are scored and trained on.

One function, used by the world builder, the cache and the trainer's start-up check, so that the ids the weak
pair scored are exactly the ids the strong model is trained on. The prompt is rendered through the tokenizer's
chat template (with the generation marker) when it has one; the response is tokenised on its own, without
special tokens, and ends with EOS, which is scored like any other token.

User text is text. A dataset row, a prompt file or a response may spell a special token (`<|endoftext|>`,
`<|im_start|>`, `<s>`, a role marker such as `<|assistant|>`); those characters are always tokenised as the ordinary
text they are, never as the control token, so a row cannot end its turn early or write turns of its own:

- text that is all user text (a response, a prompt without a chat template, a text whose tokens are counted) is
  tokenised with `split_special_tokens=True` (`encode_text`);
- a rendered chat is tokenised whole, as before; where a special token's characters fall inside a message's
  content (located exactly by rendering the template once more with a placeholder per content,
  `template_spans`), the text between the template's own control tokens is tokenised again with
  `split_special_tokens=True`, and only the template's control tokens stay (`encode_rendered`).

A text that spells no special token gets exactly the ids it got before. Added tokens that are not special
(`special=False` in the tokenizer) are ordinary vocabulary and match in any text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: transformers takes about a second to import, and `w2s --help` reaches here
    from transformers import PreTrainedTokenizerBase

Span = tuple[int, int]
"""[start, end) of a message's content in a rendered chat, in characters."""

PLACEHOLDER = "\ue000w2s-content-{}\ue001"
"""Stands for message i's content when the template is rendered to find its own text (private-use characters)."""
PLACEHOLDER_PATTERN = re.compile("\ue000w2s-content-(\\d+)\ue001")


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


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """User text on its own, as plain text: no special tokens added, and spellings of special tokens in it become
    the ordinary tokens of those characters."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []


def control_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of the tokenizer's special tokens: the named ones and every added token marked special."""
    added = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)


def encode_rendered(tokenizer: PreTrainedTokenizerBase, rendered: str, spans: list[Span]) -> list[int]:
    """A rendered chat as ids: the template's control tokens kept, the user text at `spans` as plain text.

    Args:
        rendered: the chat template's output.
        spans: where user text (each message's content) lies in `rendered`.
    """
    if not tokenizer.is_fast:  # no offsets: the template's text and the user text are tokenised piece by piece
        return _encode_pieces(tokenizer, rendered, spans)
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    control = control_ids(tokenizer)
    kept = [
        token in control and not any(start < b and a < end for a, b in spans)
        for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]
    if sum(kept) == sum(token in control for token in encoded["input_ids"]):
        return encoded["input_ids"]  # no special token inside user text: the ids of the whole text stand
    ids, cursor = [], 0
    for token, (start, end), keep in zip(encoded["input_ids"], encoded["offset_mapping"], kept):
        if keep:
            ids += encode_text(tokenizer, rendered[cursor:start]) + [token]
            cursor = end
    return ids + encode_text(tokenizer, rendered[cursor:])


def _encode_pieces(tokenizer: PreTrainedTokenizerBase, rendered: str, spans: list[Span]) -> list[int]:
    ids, cursor = [], 0
    for start, end in sorted(spans):
        if cursor < start:
            ids += tokenizer(rendered[cursor:start], add_special_tokens=False)["input_ids"]
        ids += encode_text(tokenizer, rendered[start:end])
        cursor = max(cursor, end)
    return ids + (tokenizer(rendered[cursor:], add_special_tokens=False)["input_ids"] if rendered[cursor:] else [])


def template_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], rendered: str, add_generation_prompt: bool
) -> list[Span] | None:
    """Where each message's content lies in `rendered`, exactly: the template rendered with a placeholder per
    content gives its own text between the contents, and the contents (as given, or trimmed, as many templates
    trim them) must fill the gaps. None when the chat does not decompose so (a template that branches on the
    content): the caller then searches for the contents (`find_spans`)."""
    marked = [{**message, "content": PLACEHOLDER.format(i)} for i, message in enumerate(messages)]
    try:
        skeleton = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:  # the template refuses placeholders (it inspects the content): fall back on searching
        return None
    parts = PLACEHOLDER_PATTERN.split(skeleton)
    template, order = parts[0::2], parts[1::2]
    if order != [str(i) for i in range(len(messages))] or not rendered.startswith(template[0]):
        return None
    spans, cursor = [], len(template[0])
    for message, after in zip(messages, template[1:]):
        content = message["content"]
        text = next(
            (
                t
                for t in (content, content.strip(), content.lstrip(), content.rstrip())
                if rendered.startswith(t + after, cursor)
            ),
            None,
        )
        if text is None:
            return None
        spans.append((cursor, cursor + len(text)))
        cursor += len(text) + len(after)
    return spans if cursor == len(rendered) else None


def find_spans(messages: list[dict], rendered: str) -> list[Span | None]:
    """Each message's content (trimmed, as templates often do) searched in `rendered`, in order; None for one
    that is missing."""
    spans: list[Span | None] = []
    cursor = 0
    for message in messages:
        content = message["content"].strip()
        found = rendered.find(content, cursor)
        spans.append(None if found < 0 else (found, found + len(content)))
        cursor = cursor if found < 0 else found + len(content)
    return spans


def render_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool
) -> tuple[str, list[Span]]:
    """The chat template's rendering of `messages` and where their contents lie in it (template errors propagate)."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    spans = template_spans(tokenizer, messages, rendered, add_generation_prompt)
    return rendered, spans if spans is not None else [s for s in find_spans(messages, rendered) if s is not None]


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    use_chat_template: bool = True,
    field: str | None = None,
) -> tuple[str, list[Span]]:
    """The prompt as the model sees it, and where the user text lies in it; see `render_chat_prompt`."""
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
        return prompt, [(0, len(prompt))]
    try:
        rendered, spans = render_messages(tokenizer, messages, add_generation_prompt=True)
    except Exception as err:  # jinja's TemplateError, or the template's own raise_exception: the same user mistake
        why = " ".join(str(err).split())
        raise EncodingError(f"field '{field}': the chat template refuses these messages: {why}") from err
    check_rendered(messages, rendered, field if isinstance(prompt, list) else None, field)
    return rendered, spans


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
    return render_prompt(tokenizer, prompt, use_chat_template, field)[0]


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    use_chat_template: bool = True,
    field: str | None = None,
) -> list[int]:
    """Token ids of the rendered prompt; user text stays text (module docstring).

    As the model's makers feed it: a chat template renders its own BOS (as `apply_chat_template` does, no
    special tokens are added to it); a plain-text prompt gets the special tokens the tokenizer puts before any
    text (Gemma's and Llama's BOS), never one after it (a tokenizer that adds EOS adds it to the response)."""
    rendered, spans = render_prompt(tokenizer, prompt, use_chat_template, field)
    templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    return ([] if templated else leading_special_ids(tokenizer)) + encode_rendered(tokenizer, rendered, spans)


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer adds before a text (its BOS, when it adds one); [] for most chat tokenizers."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def check_rendered(messages: list[dict], rendered: str, list_field: str | None, field: str) -> None:
    """Refuses a rendering that lost a message. A template renders only the roles it knows (many drop 'system' or
    an unknown 'tool' without a word), and a dropped message would leave the scored prompt shorter than the data
    says. So each message's content (trimmed, as templates often do) must appear in the rendered text, in order.

    Args:
        list_field: the messages' field when the prompt came as messages (named with the message's index);
            None for a text prompt (named as `field`).
    """
    for index, (message, span) in enumerate(zip(messages, find_spans(messages, rendered))):
        if span is None:
            name = f"{list_field}[{index}]" if list_field else field
            raise EncodingError(
                f"field '{name}': the chat template does not render role {message['role']!r} "
                "(the message's content is missing from the rendered prompt)"
            )


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    response: str,
    max_len: int,
    truncate: bool = False,
    use_chat_template: bool = True,
    prompt_field: str | None = None,
) -> Encoded:
    """Tokenises one example as rendered prompt + response + EOS; user text stays text (module docstring).

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
    prompt_tokens = prompt_ids(tokenizer, prompt, use_chat_template, prompt_field)
    response_ids = encode_text(tokenizer, response) + [tokenizer.eos_token_id]
    if len(prompt_tokens) >= max_len:
        raise EncodingError(
            f"field '{prompt_field or 'prompt'}' takes {len(prompt_tokens)} tokens, leaving no room for "
            f"the response within max_len={max_len}"
        )
    total = len(prompt_tokens) + len(response_ids)
    if total > max_len and not truncate:
        raise EncodingError(
            f"prompt + response take {total} tokens > max_len={max_len} (set truncation to cut the response)"
        )
    truncated = total > max_len
    if truncated:
        response_ids = response_ids[: max_len - len(prompt_tokens)]
    return Encoded(prompt_tokens + response_ids, len(prompt_tokens), truncated)

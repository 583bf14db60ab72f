"""Chat formatting with the model's own chat template, and label masking for training."""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100

#: Used only when a tokenizer has no chat template of its own (documented in docs/data.md).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give ``tokenizer`` the fallback ChatML template if it has none; return it."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The text the model sees for ``messages`` (special tokens included)."""
    return tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def prompt_of(example: dict) -> list[dict]:
    """The messages of ``example`` up to (not including) its last assistant turn."""
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def reference_of(example: dict) -> str:
    """The content of the last assistant turn of ``example``."""
    return [m for m in example["messages"] if m["role"] == "assistant"][-1]["content"]


def assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` and find the character span of every assistant turn.

    Each span starts after the generation prompt that precedes the turn and ends after the
    turn's closing text (so the end-of-turn token is inside the span, hence in the loss).

    Returns:
        ``(text, spans)``.
    """
    text = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        # the whole conversation was rendered already
        through = text if i == len(messages) - 1 else render(tokenizer, messages[: i + 1])
        if not (text.startswith(through) and through.startswith(before)):
            # Template renders a prefix differently from the whole (rare): fall back to
            # locating the content itself.
            start = text.find(m["content"], spans[-1][1] if spans else 0)
            spans.append((start, start + len(m["content"])))
            continue
        spans.append((len(before), len(through)))
    return text, spans


def encode_chat(
    tokenizer: Any, messages: list[dict], max_length: int, train_on_prompt: bool = False
) -> dict[str, list[int]]:
    """Tokenize a conversation; labels are ``-100`` outside assistant turns.

    Args:
        tokenizer: a fast tokenizer (offsets are used to map spans to tokens).
        messages: the conversation.
        max_length: truncate to this many tokens.
        train_on_prompt: take the loss on every token, not only the answers.
    """
    if train_on_prompt:
        text, spans = render(tokenizer, messages), []
    else:
        text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        truncation=True,
        max_length=max_length,
    )
    ids = enc["input_ids"]
    if train_on_prompt:
        return {"input_ids": ids, "labels": list(ids)}
    import numpy as np

    # A token is learned when it is not empty and starts inside an assistant span
    # (vectorised: no Python work per token).
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    learned = np.zeros(len(ids), dtype=bool)
    for s, e in spans:
        learned |= (starts >= s) & (starts < e)
    learned &= ends > starts
    labels = np.where(learned, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()
    return {"input_ids": ids, "labels": labels}

"""Tokenising plain text for continued pre-training, and showing what a model learns from.

Chat examples are encoded by :func:`framework.data.chat.encode_chat`; this module adds the
plain-text counterpart and :func:`render_masked`, which turns an encoded example back into
text with the tokens that carry no loss marked, for the spot-check file.
"""

from __future__ import annotations

from typing import Any

from framework.data.chat import IGNORE_INDEX

#: Brackets around the text that carries no loss in ``data/spot_check.md``.
MASK_OPEN, MASK_CLOSE = "⟦", "⟧"


def encode_text(tokenizer: Any, text: str, max_length: int) -> dict[str, list[int]]:
    """Tokenise ``text`` for next-token prediction: loss on every token, then EOS.

    The tokenizer adds its own special tokens (a BOS for models that use one). The EOS token
    closes the text so the model learns where a document ends; it is cut off, like the
    rest, when the text is longer than ``max_length`` tokens.

    Args:
        tokenizer: the model's tokenizer.
        text: one document.
        max_length: keep at most this many tokens.

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` with labels equal to the inputs (the loss
        shifts them itself).
    """
    enc = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)
    ids = list(enc["input_ids"])
    eos = tokenizer.eos_token_id
    # fewer than max_length tokens: the whole text is there, and its EOS fits
    if eos is not None and len(ids) < max_length and (not ids or ids[-1] != eos):
        ids.append(eos)
    return {"input_ids": ids, "labels": list(ids)}


def render_masked(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    """The text of ``input_ids`` with every run of tokens that carries no loss in ⟦…⟧.

    Special tokens are shown as they are (``<|im_end|>``), so the end-of-turn token can be
    seen inside or outside the loss.
    """
    parts: list[str] = []
    run: list[int] = []
    masked: bool | None = None
    for tok, lab in zip(input_ids, labels, strict=True):
        is_masked = lab == IGNORE_INDEX
        if masked is not None and is_masked != masked:
            parts.append(_piece(tokenizer, run, masked))
            run = []
        masked = is_masked
        run.append(tok)
    if run:
        parts.append(_piece(tokenizer, run, bool(masked)))
    return "".join(parts)


def _piece(tokenizer: Any, ids: list[int], masked: bool) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return f"{MASK_OPEN}{text}{MASK_CLOSE}" if masked else text

"""Prompt tokens carry no loss; every assistant turn and its end-of-turn token do."""

from __future__ import annotations

import pytest

from framework.data.chat import IGNORE_INDEX, encode_chat
from plugins.models.tiny import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(512)


def _learned_text(tokenizer, enc) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE_INDEX]
    )


def test_only_the_answer_and_end_of_turn_carry_loss(tokenizer) -> None:
    messages = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]
    enc = encode_chat(tokenizer, messages, max_length=128)
    learned = _learned_text(tokenizer, enc)
    assert learned.startswith("5<|im_end|>")
    assert "Add" not in learned and "user" not in learned and "assistant" not in learned
    # the label of every learned position is the token itself (shifted inside the loss)
    assert all(
        lab in (IGNORE_INDEX, tok) for tok, lab in zip(enc["input_ids"], enc["labels"], strict=True)
    )


def test_every_assistant_turn_of_a_conversation_is_learned(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye!"},
    ]
    learned = _learned_text(tokenizer, encode_chat(tokenizer, messages, max_length=256))
    assert "Hello!<|im_end|>" in learned and "Goodbye!<|im_end|>" in learned
    assert "Hi" not in learned.replace("Hello", "") and "Bye" not in learned.replace("Goodbye", "")
    assert "Be brief" not in learned


def test_train_on_prompt_learns_everything(tokenizer) -> None:
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    enc = encode_chat(tokenizer, messages, max_length=128, train_on_prompt=True)
    assert enc["labels"] == enc["input_ids"]


def test_truncation_respects_max_length(tokenizer) -> None:
    messages = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "x"}]
    assert len(encode_chat(tokenizer, messages, max_length=32)["input_ids"]) == 32

"""Continued pre-training (``objective=pretrain``): next-token loss on every token of the text.

Plain-text examples (``{"text": ...}``) are used as they are; chat examples are rendered with
the model's chat template and trained on whole. Each example is truncated to
``data.max_length`` tokens and ends with the end-of-text token when it fits.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import hookimpl
from framework.chat import render
from framework.losses import causal_lm_loss

NAME = "pretrain"


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"objective": [NAME]}


@hookimpl
def tunesmith_encode_example(
    name: str, example: dict, tokenizer: Any, cfg: DictConfig
) -> dict | None:
    if name != NAME:
        return None
    if "text" in example:
        text = str(example["text"])
    elif "messages" in example:
        text = render(tokenizer, example["messages"])
    else:
        return None
    max_length = int(cfg.data.max_length)
    ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)[
        "input_ids"
    ]
    eos = tokenizer.eos_token_id
    if eos is not None and len(ids) < max_length and (not ids or ids[-1] != eos):
        ids = [*ids, eos]
    return {"input_ids": ids, "labels": list(ids)}


@hookimpl
def tunesmith_compute_loss(name: str, model: Any, batch: dict) -> Any:
    return causal_lm_loss(model, batch) if name == NAME else None

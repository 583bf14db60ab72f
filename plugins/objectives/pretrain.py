"""Continued pre-training (``objective=pretrain``): plain ``text`` examples, loss on every
token and on the EOS that closes each text."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import Objective, hookimpl
from framework.data.encoding import encode_text


@hookimpl
def tunesmith_provides() -> list[Objective]:
    return [
        Objective(
            "pretrain",
            example="text",
            description="continued pre-training: the loss on every token of plain text",
        )
    ]


@hookimpl
def tunesmith_encode_example(
    name: str, example: dict, tokenizer: Any, cfg: DictConfig
) -> dict | None:
    if name != "pretrain" or "text" not in example:
        return None
    return encode_text(tokenizer, example["text"], max_length=int(cfg.data.max_length))


@hookimpl
def tunesmith_compute_loss(name: str, model: Any, batch: dict, cfg: DictConfig) -> Any:
    if name != "pretrain":
        return None
    from framework.train.losses import causal_lm_loss  # torch: only when a loss is computed

    return causal_lm_loss(model, batch)

"""Supervised fine-tuning (``objective=sft``): loss on the assistant turns only (unless
``data.train_on_prompt``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import Objective, hookimpl
from framework.data.chat import encode_chat


@hookimpl
def tunesmith_provides() -> list[Objective]:
    return [
        Objective(
            "sft",
            example="chat",
            description="supervised fine-tuning: the loss on the assistant answers only",
        )
    ]


@hookimpl
def tunesmith_encode_example(
    name: str, example: dict, tokenizer: Any, cfg: DictConfig
) -> dict | None:
    if name != "sft" or "messages" not in example:
        return None
    return encode_chat(
        tokenizer,
        example["messages"],
        max_length=int(cfg.data.max_length),
        train_on_prompt=bool(cfg.data.get("train_on_prompt", False)),
    )


@hookimpl
def tunesmith_compute_loss(name: str, model: Any, batch: dict, cfg: DictConfig) -> Any:
    if name != "sft":
        return None
    from framework.train.losses import causal_lm_loss  # torch: only when a loss is computed

    return causal_lm_loss(model, batch)

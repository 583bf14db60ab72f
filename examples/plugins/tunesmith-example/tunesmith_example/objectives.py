"""Two training objectives: ``sft_label_smoothing`` and the pairwise ``pairwise_dpo``.

Each declares in an ``Objective`` descriptor what tunesmith needs to know: its options and
their defaults (the same as its ``conf/objective/<name>.yaml``), what examples it trains on,
the fields its encoded examples carry, whether they may be packed, whether it needs a
reference model. The hooks read the options from ``ctx.options``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from framework import Objective, hookimpl
from framework.data.chat import encode_chat
from framework.errors import ConfigError
from framework.train.losses import model_inputs
from tunesmith_example import dpo


@hookimpl
def tunesmith_provides() -> list[Objective]:
    return [
        Objective(
            "sft_label_smoothing",
            options={"label_smoothing": 0.1},
            example="chat",
            description="sft with label-smoothed cross-entropy",
        ),
        Objective(
            "pairwise_dpo",
            options={"beta": 0.1},
            example="pair",
            batch_fields=dpo.FIELDS,
            reference=True,
            packing=False,
            description="direct preference optimisation on chosen/rejected pairs",
        ),
    ]


@hookimpl
def tunesmith_encode_example(name: str, example: dict, tokenizer: Any, cfg: Any) -> dict | None:
    max_length = int(cfg.data.max_length)
    if name == "sft_label_smoothing" and "messages" in example:
        return encode_chat(
            tokenizer, example["messages"], max_length, bool(cfg.data.get("train_on_prompt"))
        )
    if name == "pairwise_dpo" and "rejected" in example:
        return dpo.encode_pair(example, tokenizer, max_length)
    return None


@hookimpl
def tunesmith_collate(name: str, rows: list[dict], pad_token_id: int) -> dict | None:
    if name != "pairwise_dpo":
        return None
    return dpo.collate_pairs(rows, pad_token_id)


@hookimpl
def tunesmith_compute_loss(name: str, model: Any, batch: dict, ctx: Any) -> Any:
    if name == "pairwise_dpo":
        return dpo.dpo_loss(model, batch, ctx)
    if name != "sft_label_smoothing":
        return None
    smoothing = float(ctx.options.label_smoothing)
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(
            f"objective.label_smoothing must be in [0, 1), got {smoothing}.",
            where="objective.label_smoothing",
            hint="e.g. objective.label_smoothing=0.1",
        )
    labels = batch["labels"]
    logits = model(**model_inputs(batch)).logits[:, -labels.shape[1] :][:, :-1]
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=-100,
        label_smoothing=smoothing,
    )

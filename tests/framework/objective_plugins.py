"""Test-only objectives (``plugins=[tests.framework.objective_plugins]``, picked with
``objective.name=<name>``: they ship no config file).

* ``paired``: examples carry two declared batch fields, ``mirror_ids`` (the ids reversed)
  and ``score`` (one number); its ``tunesmith_collate`` batches them; not packed.
* ``no_tokens``: its collate hook forgets ``num_tokens``.
* ``plain``: declares a batch field, but its collate hook returns ``None`` (the default
  collator).
"""

from __future__ import annotations

from typing import Any

import torch

from framework import Objective, hookimpl
from framework.data.chat import encode_chat
from framework.data.collate import pad_ids, pad_labels

#: Examples encoded so far, per objective (tests reset it).
calls: dict[str, int] = {}


@hookimpl
def tunesmith_provides() -> list[Objective]:
    fields = ("mirror_ids", "score")
    return [
        Objective("paired", options={"weight": 1.0}, batch_fields=fields, packing=False),
        Objective("no_tokens", batch_fields=fields, packing=False),
        Objective("plain", batch_fields=fields),
    ]


@hookimpl
def tunesmith_encode_example(name: str, example: dict, tokenizer: Any, cfg: Any) -> dict | None:
    if name not in ("paired", "no_tokens", "plain"):
        return None
    calls[name] = calls.get(name, 0) + 1
    enc = encode_chat(tokenizer, example["messages"], int(cfg.data.max_length))
    return {**enc, "mirror_ids": enc["input_ids"][::-1], "score": float(len(enc["input_ids"]))}


@hookimpl
def tunesmith_collate(name: str, rows: list[dict], pad_token_id: int) -> dict | None:
    if name not in ("paired", "no_tokens"):
        return None
    ids, mask = pad_ids([r["input_ids"] for r in rows], pad_token_id)
    batch = {
        "ids": ids,
        "mask": mask,
        "targets": pad_labels([r["labels"] for r in rows], ids.shape[1]),
        "mirror": pad_ids([r["mirror_ids"] for r in rows], pad_token_id)[0],
        "score": torch.tensor([r["score"] for r in rows]),
    }
    if name == "paired":
        batch["num_tokens"] = mask.sum()
    return batch


@hookimpl
def tunesmith_compute_loss(name: str, model: Any, batch: dict, ctx: Any) -> Any:
    if name != "paired":
        return None
    out = model(input_ids=batch["ids"], attention_mask=batch["mask"], labels=batch["targets"])
    ctx.log("score", batch["score"].mean())
    return out.loss * float(ctx.options.weight)

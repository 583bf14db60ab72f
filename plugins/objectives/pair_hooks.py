"""Hook implementations the preference objectives share, made for one name.

Each pairwise objective encodes a pair the same way, batches chosen and rejected together,
and (the reference-free ones) scores a sequence by its length-normalised log-probability. A
plugin module takes these as its own hooks::

    tunesmith_encode_example = pair_hooks.encode_pairs(NAME)

No torch at import: the preference helpers load when a hook first answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from framework import hookimpl


def encode_pairs(objective: str) -> Callable[..., dict | None]:
    """``tunesmith_encode_example`` for ``objective``: a pair's chosen and rejected tokens."""

    @hookimpl(specname="tunesmith_encode_example")
    def encode(name: str, example: dict, tokenizer: Any, cfg: Any) -> dict | None:
        from plugins.objectives import preference as pref

        if name != objective or "rejected" not in example:
            return None
        return pref.encode_pair(example, tokenizer, int(cfg.data.max_length))

    return encode


def collate_pairs(objective: str) -> Callable[..., dict | None]:
    """``tunesmith_collate`` for ``objective``: chosen and rejected rows in one padded batch."""

    @hookimpl(specname="tunesmith_collate")
    def collate(name: str, rows: list[dict], pad_token_id: int) -> dict | None:
        from plugins.objectives import preference as pref

        return pref.collate_pairs(rows, pad_token_id) if name == objective else None

    return collate


def compute_loss(objective: str, loss: Callable[[Any, dict, Any], Any]) -> Callable[..., Any]:
    """``tunesmith_compute_loss`` for ``objective``: ``loss(model, batch, ctx)``."""

    @hookimpl(specname="tunesmith_compute_loss")
    def compute(name: str, model: Any, batch: dict, ctx: Any) -> Any:
        return loss(model, batch, ctx) if name == objective else None

    return compute


def length_normalised_reward(objective: str) -> Callable[..., Any]:
    """``tunesmith_sequence_reward`` for ``objective``: ``beta`` x the mean log-probability
    per answer token (the implicit reward of the reference-free objectives)."""

    @hookimpl(specname="tunesmith_sequence_reward")
    def reward(name: str, logps: Any, tokens: Any, options: Any) -> Any:
        if name != objective:
            return None
        return float(options.beta) * logps / tokens.clamp(min=1)

    return reward

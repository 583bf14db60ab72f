"""Losses shared by objectives."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from framework.chat import IGNORE_INDEX


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """The transformer body and the LM head of ``model``, when the fast path applies.

    The fast path computes logits only where a label is set. It is skipped for PEFT prompt
    learning (virtual tokens change the inputs) and for models that post-process logits.
    """
    inner = model
    if hasattr(model, "get_base_model"):
        peft_cfg = getattr(model, "active_peft_config", None)
        if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
            return None
        inner = model.get_base_model()
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None):
        return None
    get_decoder = getattr(inner, "get_decoder", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if get_decoder is None or head is None:
        return None
    decoder = get_decoder()
    if decoder is None or decoder is inner:
        return None
    return decoder, head


def causal_lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not ``-100``.

    Equal to ``model(**batch).loss`` but computes the (large) vocabulary projection only at
    the labelled positions, which are a minority when the prompt is masked.
    """
    labels = batch["labels"]
    parts = _decoder_and_head(model)
    if parts is None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        # prompt tuning prepends virtual tokens to the outputs: keep the input positions
        logits = out.logits[:, -labels.shape[1] : -1]
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        return F.cross_entropy(logits[mask].float(), targets[mask])
    decoder, head = parts
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][mask])
    return F.cross_entropy(logits.float(), targets[mask])

"""Losses shared by objectives."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from framework.data.chat import IGNORE_INDEX


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


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments that run a model on ``batch``, padded or packed.

    A padded batch passes its ``attention_mask``; a packed batch passes its ``position_ids``
    and no mask, which is how transformers knows to keep the packed examples apart. The KV
    cache is off: training never reuses it, and with a cache transformers would not look for
    packed sequences. Use this in a loss plugin instead of ``model(**batch)``.
    """
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def packing_target(model: Any) -> Any:
    """The module :func:`causal_lm_loss` runs: the decoder on the fast path, else the model."""
    parts = _decoder_and_head(model)
    return parts[0] if parts is not None else model


def packing_supported(model: Any) -> tuple[bool, str]:
    """Whether ``model`` keeps packed examples apart, and if not, why (checked once).

    PEFT prompt learning never does: its virtual tokens are put before every row, and so
    before all but the first example of a packed row.
    """
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        return False, f"{type(peft_cfg).__name__} puts virtual tokens before every row"
    target = packing_target(model)
    try:
        ensure_packing_supported(target)
    except Exception as exc:  # the probe failing in any way means: do not pack
        return False, str(exc).splitlines()[0]
    return True, ""


def ensure_packing_supported(model: Any) -> None:
    """Check once per model that packed examples stay apart (see ``check_packing_isolation``)."""
    if getattr(model, "_tunesmith_packing_checked", False):
        return
    from framework.data.packing import check_packing_isolation

    check_packing_isolation(model)
    object.__setattr__(model, "_tunesmith_packing_checked", True)


def causal_lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not ``-100``.

    Equal to ``model(**batch).loss`` but computes the (large) vocabulary projection only at
    the labelled positions, which are a minority when the prompt is masked. Takes padded
    and packed batches alike (see :func:`model_inputs`).
    """
    labels = batch["labels"]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    parts = _decoder_and_head(model)
    if parts is None:
        if "position_ids" in batch:
            ensure_packing_supported(model)
        # prompt tuning prepends virtual tokens to the outputs: keep the input positions
        logits = model(**model_inputs(batch)).logits[:, -labels.shape[1] :][:, :-1]
        return F.cross_entropy(logits[mask].float(), targets[mask])
    decoder, head = parts
    if "position_ids" in batch:
        ensure_packing_supported(decoder)
    hidden = decoder(**model_inputs(batch)).last_hidden_state
    logits = head(hidden[:, :-1][mask])
    return F.cross_entropy(logits.float(), targets[mask])

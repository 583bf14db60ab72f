"""Generating chat answers in batches: the one place where evaluation, chat and serve decide
how a model answers and where an answer ends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from framework.errors import ConfigError

log = logging.getLogger(__name__)

#: Tokens that end an assistant turn in common chat templates; generation stops at any of
#: them that the tokenizer knows, besides the model's own ``eos_token_id``.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


# --------------------------------------------------------------------------- generation


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a turn: the model's ``eos_token_id`` plus known end-of-turn tokens."""
    ids: list[int] = []
    gen_cfg = getattr(model, "generation_config", None)
    for source in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.append(source)
        elif source:
            ids.extend(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    unk = getattr(tokenizer, "unk_token_id", None)
    seen: list[int] = []
    for i in ids:
        if i not in seen and (i != unk or i == tokenizer.eos_token_id):
            seen.append(i)
    return seen


def generation_kwargs(model: Any, tokenizer: Any, ev: DictConfig) -> dict[str, Any]:
    """Keyword arguments for ``model.generate`` from the ``evaluator`` group."""
    do_sample = bool(ev.get("do_sample", False))
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(ev.get("max_new_tokens", 64)),
        "do_sample": do_sample,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": end_of_turn_ids(model, tokenizer),
    }
    if int(kwargs["max_new_tokens"]) < 1:
        raise ConfigError(
            "evaluator.max_new_tokens must be at least 1.", where="evaluator.max_new_tokens"
        )
    if do_sample:
        kwargs["temperature"] = float(ev.get("temperature", 1.0))
        kwargs["top_p"] = float(ev.get("top_p", 1.0))
        if ev.get("top_k") is not None:
            kwargs["top_k"] = int(ev.top_k)
    else:  # greedy: silence sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if ev.get("repetition_penalty") not in (None, 1, 1.0):
        kwargs["repetition_penalty"] = float(ev.repetition_penalty)
    stop = [str(s) for s in (ev.get("stop") or [])]
    if stop:
        kwargs["stop_strings"] = stop
        kwargs["tokenizer"] = tokenizer
    return kwargs


def generate_batch(model: Any, tokenizer: Any, prompts: list[str], kwargs: dict) -> list[str]:
    """Generate one left-padded batch; returns the decoded new text of each prompt."""
    import torch

    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
        model.device
    )
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    stops = kwargs.get("stop_strings") or []
    # a byte-level BPE cut by max_new_tokens can end inside a character: drop the remains
    return [_cut_at_stop(t, stops).rstrip("\ufffd").strip() for t in texts]


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    ev: DictConfig,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Generate an answer for each rendered prompt, in batches; stop at end of turn.

    Greedy unless ``ev.do_sample``. Prompts are batched longest first (less padding, and a
    batch that does not fit in memory fails at once, not at the end).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (padding is switched to the left while generating).
        prompts: prompts already rendered with the chat template.
        ev: the ``evaluator`` group (``batch_size``, ``max_new_tokens``, sampling keys).
        on_batch: called after each batch with the prompt indices and their answers.

    Returns:
        The answers, in the order of ``prompts``.
    """
    import torch

    model.eval()
    kwargs = generation_kwargs(model, tokenizer, ev)
    batch_size = max(1, int(ev.get("batch_size", 16)))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    seed = ev.get("seed")
    outputs: list[str | None] = [None] * len(prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if kwargs["do_sample"] and seed is not None:
                torch.manual_seed(int(seed) + start)
            texts = generate_batch(model, tokenizer, [prompts[i] for i in idx], kwargs)
            for i, t in zip(idx, texts, strict=True):
                outputs[i] = t
            if on_batch is not None:
                on_batch(idx, texts)
    finally:
        tokenizer.padding_side = old_side
    return [o or "" for o in outputs]

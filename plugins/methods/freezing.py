"""Partial fine-tuning: choose which parameters of a model train, freeze the rest."""

from __future__ import annotations

import re
from typing import Any

from framework.errors import ConfigError, ModelError


def decoder_layers(model: Any) -> tuple[str, list[Any]]:
    """The model's stack of transformer blocks: ``(dotted name, list of blocks)``.

    Found as the ``ModuleList`` with ``config.num_hidden_layers`` entries (``model.layers``
    in Llama, ``transformer.h`` in GPT-2...), so it works for any Hugging Face causal LM.

    Raises:
        ModelError: no such list exists in this model.
    """
    import torch

    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0
    ]
    if n is not None:
        matching = [(name, m) for name, m in candidates if len(m) == n]
        if matching:
            candidates = matching
    if not candidates:
        raise ModelError(
            f"Could not find the transformer blocks of {type(model).__name__}.",
            where="method.last_n_layers",
            hint="use method.trainable_modules=[...] (regexes on parameter names) instead.",
        )
    name, layers = max(candidates, key=lambda c: len(c[1]))
    return name, list(layers)


def select_trainable(
    model: Any, last_n_layers: int = 0, trainable_modules: list[str] | None = None
) -> list[str]:
    """Freeze every parameter of ``model`` except the chosen ones; return their names.

    Args:
        model: a Hugging Face causal LM.
        last_n_layers: train the last N transformer blocks (0: none chosen by count).
        trainable_modules: regular expressions searched in parameter names
            (``lm_head``, ``mlp``, ``model\\.norm``...); matching parameters train too.

    Returns:
        The names of the parameters that train, in model order.

    Raises:
        ConfigError: ``last_n_layers`` is out of range, a pattern matches nothing, a pattern
            is not a valid regex, or nothing would train.
    """
    patterns = [str(p) for p in (trainable_modules or [])]
    last_n_layers = int(last_n_layers or 0)
    chosen: set[int] = set()  # ids of parameter tensors (tied weights count once)

    if last_n_layers:
        prefix, layers = decoder_layers(model)
        if not 0 < last_n_layers <= len(layers):
            raise ConfigError(
                f"method.last_n_layers={last_n_layers} is out of range: this model has "
                f"{len(layers)} transformer blocks ({prefix}).",
                where="method.last_n_layers",
                hint=f"give a number from 1 to {len(layers)} (0 with method.trainable_modules).",
            )
        for layer in layers[-last_n_layers:]:
            chosen.update(id(p) for p in layer.parameters())

    named = list(model.named_parameters(remove_duplicate=False))
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"'{pattern}' is not a valid regular expression: {exc}",
                where="method.trainable_modules",
            ) from exc
        hits = [p for name, p in named if regex.search(name)]
        if not hits:
            sample = ", ".join(name for name, _ in named[:6])
            raise ConfigError(
                f"method.trainable_modules: '{pattern}' matches no parameter of this model.",
                where="method.trainable_modules",
                hint=f"patterns are searched in parameter names such as: {sample}, ...",
            )
        chosen.update(id(p) for p in hits)

    if not chosen:
        raise ConfigError(
            "method=freeze was given nothing to train.",
            where="method.last_n_layers / method.trainable_modules",
            hint="e.g. method.last_n_layers=2, or method.trainable_modules=[lm_head]",
        )
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return [name for name, p in model.named_parameters() if p.requires_grad]

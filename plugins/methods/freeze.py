"""``method=freeze``: only the chosen parts train (the last N blocks, modules by name).

``method.last_n_layers=2`` trains the last two transformer blocks;
``method.trainable_modules=[lm_head, mlp]`` trains every parameter whose name matches one
of the regexes. Everything else is frozen. The whole model is saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import Method, hookimpl
from framework.model.loading import load_pretrained, save_model
from plugins.methods.freezing import select_trainable

NAME = "freeze"
log = logging.getLogger(__name__)


@hookimpl
def tunesmith_provides() -> list[Method]:
    return [
        Method(
            NAME,
            kind="partial",
            description="only the chosen blocks or modules train; the whole model is saved",
        )
    ]


@hookimpl
def tunesmith_apply_method(name: str, model: Any, cfg: DictConfig) -> Any:
    if name != NAME:
        return None
    names = select_trainable(
        model,
        last_n_layers=int(cfg.method.get("last_n_layers") or 0),
        trainable_modules=list(cfg.method.get("trainable_modules") or []),
    )
    log.info("method=freeze trains %d parameter tensors: %s", len(names), ", ".join(names[:8]))
    return model


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    return save_model(model, tokenizer, path) if name == NAME else None


@hookimpl
def tunesmith_load_method(name: str, path: Path, cfg: DictConfig) -> Any:
    return load_pretrained(path, cfg)[0] if name == NAME else None

"""``method=full``: every parameter trains; the whole model is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import Method, hookimpl
from framework.model.loading import load_pretrained, save_model

NAME = "full"


@hookimpl
def tunesmith_provides() -> list[Method]:
    return [Method(NAME, kind="full", description="every weight trains; the whole model is saved")]


@hookimpl
def tunesmith_apply_method(name: str, model: Any) -> Any:
    if name != NAME:
        return None
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    return save_model(model, tokenizer, path) if name == NAME else None


@hookimpl
def tunesmith_load_method(name: str, path: Path, cfg: DictConfig) -> Any:
    return load_pretrained(path, cfg)[0] if name == NAME else None

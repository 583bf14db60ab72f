"""``method=full``: every parameter trains; the whole model is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import hookimpl


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"method": ["full"]}


@hookimpl
def tunesmith_apply_method(name: str, model: Any) -> Any:
    if name != "full":
        return None
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    if name != "full":
        return None
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@hookimpl
def tunesmith_load_method(name: str, path: Path, cfg: DictConfig) -> Any:
    if name != "full":
        return None
    from framework.models import load_pretrained

    model, _ = load_pretrained(path, cfg)
    return model

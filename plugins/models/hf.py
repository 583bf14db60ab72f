"""``model=hf``: any local Hugging Face causal-LM folder (``model.path=/some/dir``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import ModelSource, hookimpl
from framework.errors import ConfigError
from framework.model.loading import load_pretrained


@hookimpl
def tunesmith_provides() -> list[ModelSource]:
    return [ModelSource("hf", description="any local Hugging Face causal-LM folder (model.path)")]


@hookimpl
def tunesmith_build_model(name: str, cfg: DictConfig) -> tuple[Any, Any] | None:
    if name != "hf":
        return None
    path = cfg.model.get("path")
    if not path or path == "???":
        raise ConfigError(
            "model=hf needs a local model folder.",
            where="model.path",
            hint="add model.path=/path/to/hf/model",
        )
    return load_pretrained(path, cfg)

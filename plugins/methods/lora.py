"""``method=lora``: low-rank adapters through PEFT; every ``method.*`` key goes to LoraConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import Method, hookimpl
from plugins.methods.peft_common import apply_peft, load_adapter, peft_config, save_adapter

NAME = "lora"


@hookimpl
def tunesmith_provides() -> list[Method]:
    return [
        Method(
            NAME, kind="adapter", description="low-rank adapters (peft.LoraConfig) on a frozen base"
        )
    ]


@hookimpl
def tunesmith_apply_method(name: str, model: Any, cfg: DictConfig) -> Any:
    if name != NAME:
        return None
    return apply_peft(model, peft_config("LoraConfig", cfg.method))


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    return save_adapter(model, tokenizer, path) if name == NAME else None


@hookimpl
def tunesmith_load_method(name: str, base_model: Any, path: Path) -> Any:
    return load_adapter(base_model, path) if name == NAME else None

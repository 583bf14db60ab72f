"""``method=prompt_tuning``: learned soft-prompt embeddings put before every input (PEFT).

Every ``method.*`` key except tunesmith's own goes to ``peft.PromptTuningConfig``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import Method, hookimpl
from plugins.methods.peft_common import (
    apply_peft,
    fill_prompt_tuning_tokenizer,
    load_adapter,
    peft_config,
    save_adapter,
)

NAME = "prompt_tuning"


@hookimpl
def tunesmith_provides() -> list[Method]:
    return [
        Method(
            NAME,
            kind="adapter",
            trainable_share=0.001,
            description="learned soft-prompt embeddings put before every input (PEFT)",
        )
    ]


@hookimpl
def tunesmith_apply_method(name: str, model: Any, cfg: DictConfig) -> Any:
    if name != NAME:
        return None
    from framework.pipeline import to_container

    options = fill_prompt_tuning_tokenizer(to_container(cfg.method), model)
    return apply_peft(model, peft_config("PromptTuningConfig", options))


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    return save_adapter(model, tokenizer, path) if name == NAME else None


@hookimpl
def tunesmith_load_method(name: str, base_model: Any, path: Path) -> Any:
    return load_adapter(base_model, path) if name == NAME else None

"""``method=qlora``: the base model loaded in 4-bit NF4 (bitsandbytes), LoRA on top.

The base is quantized at load time (``tunesmith_model_load_kwargs`` hands a
``BitsAndBytesConfig`` from ``method.quantization`` to ``from_pretrained``), prepared with
``peft.prepare_model_for_kbit_training``, then wrapped with ``peft.LoraConfig`` built from
the other ``method.*`` keys. Only the adapter is saved; loading it quantizes the base again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import Method, hookimpl
from framework.errors import ModelError
from plugins.methods.peft_common import (
    apply_peft,
    is_loaded_in_4bit,
    load_adapter,
    peft_config,
    save_adapter,
)
from plugins.methods.quantization import prepare_for_kbit_training, quantized_load_kwargs

NAME = "qlora"


@hookimpl
def tunesmith_provides() -> list[Method]:
    return [
        Method(
            NAME,
            kind="adapter",
            base_bits=4,
            description="LoRA on a base model loaded in 4-bit NF4 (bitsandbytes)",
        )
    ]


@hookimpl
def tunesmith_model_load_kwargs(name: str, cfg: DictConfig) -> dict[str, Any] | None:
    return quantized_load_kwargs(cfg) if name == NAME else None


@hookimpl
def tunesmith_apply_method(name: str, model: Any, cfg: DictConfig) -> Any:
    if name != NAME:
        return None
    if not is_loaded_in_4bit(model) and not getattr(model, "is_loaded_in_8bit", False):
        raise ModelError(
            f"method=qlora needs a quantized base model, but model={cfg.model.name} was "
            "loaded in full precision.",
            where=f"model={cfg.model.name}",
            hint="the model plugin must load through framework.model.loading.load_pretrained (which "
            "applies the method's load arguments); or use method=lora.",
        )
    config = peft_config("LoraConfig", cfg.method)
    return apply_peft(prepare_for_kbit_training(model), config)


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    return save_adapter(model, tokenizer, path) if name == NAME else None


@hookimpl
def tunesmith_load_method(name: str, base_model: Any, path: Path) -> Any:
    return load_adapter(base_model, path) if name == NAME else None

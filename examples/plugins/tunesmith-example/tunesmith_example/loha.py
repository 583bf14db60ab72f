"""The ``loha`` method: LoHa adapters (low-rank Hadamard product) through PEFT's ``LoHaConfig``.

A new PEFT method is a few lines: declare it (``Method(kind="adapter")`` tells tunesmith the
base stays frozen and can serve as the reference model, and what the memory estimate should
assume), build the PEFT config from ``cfg.method``, and let PEFT save and load the adapter.
The export stage merges it like any PEFT adapter (``export.formats=[merged]``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from framework import Method, hookimpl
from framework.errors import ConfigError, ModelError

NAME = "loha"
#: Keys of ``cfg.method`` that are tunesmith's, not LoHaConfig's.
OWN_KEYS = {"name", "gradient_checkpointing"}


def loha_config(method_cfg: Any) -> Any:
    """``peft.LoHaConfig`` from the ``method`` group; an unknown key is a ConfigError."""
    from omegaconf import OmegaConf
    from peft import LoHaConfig

    options = OmegaConf.to_container(method_cfg, resolve=True)
    options = {k: v for k, v in options.items() if k not in OWN_KEYS}
    known = {f.name for f in dataclasses.fields(LoHaConfig) if f.init}
    for key in options:
        if key not in known:
            raise ConfigError(
                f"LoHaConfig has no option '{key}'.",
                where=f"method.{key} (method={NAME})",
                hint="options: r, alpha, rank_dropout, module_dropout, target_modules, ...",
            )
    return LoHaConfig(task_type="CAUSAL_LM", **options)


def apply(model: Any, method_cfg: Any) -> Any:
    """Wrap ``model`` with LoHa adapters; only they train."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, loha_config(method_cfg))
    except ValueError as exc:  # e.g. target_modules that match nothing in this model
        raise ConfigError(
            f"PEFT could not add LoHa adapters to this model: {exc}",
            where="method.target_modules",
            hint="name modules this model has (print(model) lists them).",
        ) from exc


def save(model: Any, tokenizer: Any, path: Path) -> Path:
    """The adapter (``adapter_config.json`` + safetensors) and the tokenizer, by PEFT."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)


def load(base_model: Any, path: Path) -> Any:
    """The adapter saved at ``path`` on top of ``base_model``, by PEFT."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise ModelError(
            f"'{path}' holds no adapter (adapter_config.json is missing).",
            where=str(path),
            hint="this run was not trained with method=loha; pick its method.",
        )
    return PeftModel.from_pretrained(base_model, path).eval()


@hookimpl
def tunesmith_provides() -> list[Method]:
    return [
        Method(NAME, kind="adapter", description="LoHa: low-rank Hadamard-product adapters (PEFT)")
    ]


@hookimpl
def tunesmith_apply_method(name: str, model: Any, cfg: Any) -> Any:
    return apply(model, cfg.method) if name == NAME else None


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    return save(model, tokenizer, path) if name == NAME else None


@hookimpl
def tunesmith_load_method(name: str, base_model: Any, path: Path) -> Any:
    return load(base_model, path) if name == NAME else None

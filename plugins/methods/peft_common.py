"""PEFT plumbing shared by the adapter methods: config from the method group, save, load.

The method plugins (``lora``, ``dora``, ``ia3``, ``prompt_tuning``, ``prefix_tuning``,
``qlora``) are a few lines each: they pick a PEFT config class and call the functions here.
Every key of the ``method`` group except tunesmith's own (:data:`OWN_KEYS`) is passed to that
class, so any PEFT option can be set from the command line (``method.r=16``; an option that
the method's YAML does not list takes a ``+``: ``+method.use_rslora=true``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework.errors import ConfigError, ModelError, did_you_mean
from framework.pipeline import to_container

log = logging.getLogger(__name__)

#: Keys of the ``method`` group that are tunesmith's, not the PEFT config's.
OWN_KEYS: frozenset[str] = frozenset({"name", "lr", "gradient_checkpointing", "quantization"})


def peft_options(config_class: type, method_cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The ``method.*`` keys meant for ``config_class``, checked against its fields.

    Raises:
        ConfigError: a key is not an option of ``config_class`` (with the closest name).
    """
    method_name = str(method_cfg.get("name", "?"))
    options = {k: v for k, v in to_container(method_cfg).items() if k not in OWN_KEYS}
    known = sorted(f.name for f in dataclasses.fields(config_class) if f.init)
    for key in options:
        if key not in known:
            raise ConfigError(
                f"{config_class.__name__} has no option '{key}'.{did_you_mean(key, known)}",
                where=f"method.{key} (method={method_name})",
                hint=f"method={method_name} takes the options of peft.{config_class.__name__}: "
                + ", ".join(k for k in known if k not in {"peft_type", "auto_mapping"}),
            )
    return options


def peft_config(
    config_class_name: str,
    method_cfg: DictConfig | Mapping[str, Any],
    fixed: Mapping[str, Any] | None = None,
) -> Any:
    """Build ``peft.<config_class_name>`` from the method group.

    Args:
        config_class_name: a PEFT config class, e.g. ``"LoraConfig"``, ``"IA3Config"``.
        method_cfg: the ``method`` config group.
        fixed: options the method itself sets and the user cannot change (``use_dora``).

    Returns:
        The PEFT config, with ``task_type="CAUSAL_LM"`` unless the group sets another.

    Raises:
        ConfigError: an unknown option, or a value PEFT rejects.
    """
    import peft

    config_class = getattr(peft, config_class_name)
    options = peft_options(config_class, method_cfg)
    options.update(fixed or {})
    options.setdefault("task_type", "CAUSAL_LM")
    try:
        return config_class(**options)
    except (TypeError, ValueError) as exc:
        name = method_cfg.get("name", "?")
        raise ConfigError(
            f"peft.{config_class_name} rejected the options of method={name}: {exc}",
            where=f"method.* (method={name})",
            hint=f"fix the value named above; peft.{config_class_name}'s docstring lists what "
            "each option takes.",
        ) from exc


def apply_peft(model: Any, config: Any) -> Any:
    """Wrap ``model`` with the adapter ``config``; only the adapter's parameters train."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target_modules that match nothing in this model
        raise ConfigError(
            f"PEFT could not apply {type(config).__name__} to this model: {exc}",
            where="method.target_modules" if "target" in str(exc) else "method.*",
            hint="name modules this model has (print(model) lists them), or use "
            "method.target_modules=all-linear.",
        ) from exc


def fill_prompt_tuning_tokenizer(options: dict[str, Any], model: Any) -> dict[str, Any]:
    """Prompt tuning from text needs a tokenizer path: default it to the base model's folder."""
    init = str(options.get("prompt_tuning_init") or "RANDOM").upper()
    if init == "TEXT" and not options.get("tokenizer_name_or_path"):
        options["tokenizer_name_or_path"] = getattr(model, "name_or_path", None)
        if not options.get("prompt_tuning_init_text"):
            raise ConfigError(
                "prompt_tuning_init=TEXT needs the text to start from.",
                where="method.prompt_tuning_init_text",
                hint="add method.prompt_tuning_init_text='Extract the contact as JSON.'",
            )
    return options


def save_adapter(model: Any, tokenizer: Any, path: Path) -> Path:
    """Write the adapter (weights + ``adapter_config.json``) and the tokenizer to ``path``."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def load_adapter(base_model: Any, path: Path) -> Any:
    """Load the adapter saved at ``path`` on top of ``base_model`` (for inference)."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise ModelError(
            f"'{path}' holds no adapter (adapter_config.json is missing).",
            where=str(path),
            hint="was this run trained with another method? Load it with the same method=... "
            "it was trained with.",
        )
    model = PeftModel.from_pretrained(base_model, path)
    model.eval()
    return model


def is_loaded_in_4bit(model: Any) -> bool:
    """Whether ``model``'s linear layers are bitsandbytes 4-bit layers."""
    if getattr(model, "is_loaded_in_4bit", False):
        return True
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())

"""``method=lora``: low-rank adapters through PEFT; every ``method.*`` key goes to LoraConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import hookimpl
from framework.errors import ConfigError
from framework.pipeline import to_container

#: Keys of the method group that are tunesmith's, not LoraConfig's.
OWN_KEYS = {"name"}


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"method": ["lora"]}


def lora_config(method_cfg: DictConfig) -> Any:
    """A ``peft.LoraConfig`` from the method group, with a clear error for a wrong key."""
    from peft import LoraConfig

    kwargs = {k: v for k, v in to_container(method_cfg).items() if k not in OWN_KEYS}
    kwargs.setdefault("task_type", "CAUSAL_LM")
    try:
        return LoraConfig(**kwargs)
    except TypeError as exc:
        import dataclasses

        known = [f.name for f in dataclasses.fields(LoraConfig)]
        bad = str(exc).split("'")[1] if "'" in str(exc) else str(exc)
        from framework.errors import did_you_mean

        raise ConfigError(
            f"LoraConfig has no option '{bad}'.{did_you_mean(bad, known)}",
            where=f"method.{bad}",
            hint="see peft.LoraConfig for the options method=lora takes.",
        ) from exc


@hookimpl
def tunesmith_apply_method(name: str, model: Any, cfg: DictConfig) -> Any:
    if name != "lora":
        return None
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg.method))


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    if name != "lora":
        return None
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@hookimpl
def tunesmith_load_method(name: str, base_model: Any, path: Path) -> Any:
    if name != "lora":
        return None
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, path)

"""Loading a base model quantized through bitsandbytes, and preparing it for k-bit training.

Used by ``method=qlora``: its ``method.quantization`` block becomes a
``transformers.BitsAndBytesConfig`` (4-bit NF4 by default), passed to ``from_pretrained``
through the ``tunesmith_model_load_kwargs`` hook. bitsandbytes runs on CPU as well as CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from framework.errors import ConfigError
from framework.model.loading import torch_dtype
from framework.pipeline import to_container

#: ``BitsAndBytesConfig`` options that name a torch dtype.
_DTYPE_KEYS = ("bnb_4bit_compute_dtype",)


def bnb_config(options: DictConfig | Mapping[str, Any] | None) -> Any:
    """A ``transformers.BitsAndBytesConfig`` from ``method.quantization``.

    Raises:
        ConfigError: an unknown option or a value bitsandbytes does not take.
    """
    import inspect

    from transformers import BitsAndBytesConfig

    kwargs = to_container(options) if options is not None else {}
    if not (kwargs.get("load_in_4bit") or kwargs.get("load_in_8bit")):
        raise ConfigError(
            "method.quantization loads the model neither in 4-bit nor in 8-bit.",
            where="method.quantization.load_in_4bit",
            hint="set method.quantization.load_in_4bit=true (QLoRA), or use method=lora.",
        )
    for key in _DTYPE_KEYS:
        if kwargs.get(key) is not None:
            kwargs[key] = torch_dtype(kwargs[key])
    known = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
    from framework.errors import did_you_mean

    for key in kwargs:
        if key not in known:
            raise ConfigError(
                f"BitsAndBytesConfig has no option '{key}'.{did_you_mean(key, known)}",
                where=f"method.quantization.{key}",
                hint="options: " + ", ".join(sorted(known)),
            )
    try:
        return BitsAndBytesConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"BitsAndBytesConfig rejected method.quantization: {exc}",
            where="method.quantization",
            hint="bnb_4bit_quant_type is nf4 or fp4; compute dtype float32 | bfloat16 | float16.",
        ) from exc


def quantized_load_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the base model quantized for this run.

    On a CUDA machine (unless ``trainer.accelerator=cpu``) the weights are placed on this
    process's GPU (``LOCAL_RANK``), since bitsandbytes quantizes where the weights live;
    otherwise they stay on the CPU.
    """
    import torch

    kwargs: dict[str, Any] = {"quantization_config": bnb_config(cfg.method.get("quantization"))}
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    if torch.cuda.is_available() and accelerator in {"auto", "gpu", "cuda"}:
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    return kwargs


def prepare_for_kbit_training(model: Any) -> Any:
    """``peft.prepare_model_for_kbit_training``: freeze the base, upcast norms, input grads.

    Gradient checkpointing is left to ``method.gradient_checkpointing`` (the train stage turns
    it on for every method the same way).
    """
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

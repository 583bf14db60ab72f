"""Loading Hugging Face causal LMs from local folders, with clear errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework.chat import ensure_chat_template
from framework.errors import ModelError

log = logging.getLogger(__name__)

#: ``from_pretrained`` arguments the run's method asked for (``tunesmith_model_load_kwargs``),
#: in force while :func:`method_load_kwargs` is active; :func:`load_pretrained` applies them.
_METHOD_LOAD_KWARGS: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "tunesmith_method_load_kwargs", default=None
)


@contextmanager
def method_load_kwargs(kwargs: Mapping[str, Any] | None) -> Iterator[None]:
    """Make every :func:`load_pretrained` call inside the block use ``kwargs`` too.

    :meth:`framework.run.Run.build_base` wraps the ``tunesmith_build_model`` hook in this,
    with what the method's ``tunesmith_model_load_kwargs`` returned (e.g. a 4-bit
    ``quantization_config`` for ``method=qlora``), so model plugins need not know methods.
    """
    token = _METHOD_LOAD_KWARGS.set(dict(kwargs or {}))
    try:
        yield
    finally:
        _METHOD_LOAD_KWARGS.reset(token)


DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "auto": "auto",
}


def torch_dtype(name: str | None) -> Any:
    """A ``torch.dtype`` (or ``"auto"``) from a config string."""
    import torch

    key = DTYPES.get(str(name or "float32").lower())
    if key is None:
        raise ModelError(
            f"Unknown model dtype '{name}'.", where="model.dtype", hint=f"one of {sorted(DTYPES)}"
        )
    return key if key == "auto" else getattr(torch, key)


def check_model_dir(path: Path) -> Path:
    """Raise :class:`ModelError` unless ``path`` is a Hugging Face model folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(
            f"The model folder '{path}' does not exist.",
            where=f"model.path={path}",
            hint="give a local folder with config.json and weights (tunesmith never downloads).",
        )
    if not (path / "config.json").is_file():
        raise ModelError(
            f"'{path}' is not a Hugging Face model folder: it has no config.json.",
            where=f"model.path={path}",
            hint="point model.path at the folder that save_pretrained() wrote.",
        )
    return path


def load_pretrained(path: Path, cfg: DictConfig, **extra: Any) -> tuple[Any, Any]:
    """Load model and tokenizer from a local folder, honouring ``model.*`` options.

    Extra keyword arguments go to ``AutoModelForCausalLM.from_pretrained``, on top of those
    the run's method asked for through :func:`method_load_kwargs` (e.g. the 4-bit
    quantization config of ``method=qlora``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(path)
    model_cfg = cfg.model
    trust = bool(model_cfg.get("trust_remote_code", False))
    kwargs = {
        "dtype": torch_dtype(model_cfg.get("dtype")),
        "trust_remote_code": trust,
        **(_METHOD_LOAD_KWARGS.get() or {}),
        **extra,
    }
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Could not load the model in '{path}': {exc}",
            where=f"model.path={path}",
            hint="check the folder holds a complete causal-LM checkpoint; set "
            "model.trust_remote_code=true only for a model you trust that needs it.",
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        log.warning(
            "the tokenizer in %s has no chat template; using tunesmith's ChatML fallback", path
        )
    ensure_chat_template(tokenizer)
    return model, tokenizer


def save_model(model: Any, tokenizer: Any, path: Path) -> Path:
    """Save a whole model (safetensors) and its tokenizer under ``path``; return ``path``."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path

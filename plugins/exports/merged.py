"""Export formats ``adapter`` (the adapter folder as trained) and ``merged`` (a full HF model).

``merged`` folds a PEFT adapter into the base weights (``merge_and_unload``) and writes a
standard Hugging Face folder (safetensors, config, tokenizer with chat template, generation
config) that ``AutoModelForCausalLM.from_pretrained`` loads without tunesmith.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from framework import hookimpl
from framework.run import Run


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"export": ["adapter", "merged"]}


@hookimpl
def tunesmith_export(name: str, run: Run, path: Path) -> Path | None:
    if name == "adapter":
        shutil.copytree(run.artifact_dir, path, dirs_exist_ok=True)
        return path
    if name != "merged":
        return None
    model, tokenizer = run.load_tuned()
    if hasattr(model, "merge_and_unload"):
        # merge into a copy so the in-memory tuned model keeps its adapter
        base, _ = run.build_base()
        from peft import PeftModel

        merged = PeftModel.from_pretrained(base, run.artifact_dir).merge_and_unload()
    else:
        merged = model
    merged.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path

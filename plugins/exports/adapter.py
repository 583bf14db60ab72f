"""Export format ``adapter``: what the method trained, as the train stage saved it.

For LoRA / QLoRA a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``,
tokenizer); for ``method=full`` the whole fine-tuned model folder.
"""

from __future__ import annotations

from pathlib import Path

from framework import hookimpl
from framework.export.stage import copy_artifact
from framework.run import Run


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"export": ["adapter"]}


@hookimpl
def tunesmith_export(name: str, run: Run, path: Path) -> Path | None:
    if name != "adapter":
        return None
    return copy_artifact(run, path)

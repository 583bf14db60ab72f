"""Export format ``adapter``: what the method trained, as the train stage saved it.

For an adapter method (LoRA, QLoRA...) a PEFT adapter folder (``adapter_config.json``,
``adapter_model.safetensors``, tokenizer); for a method that trains the base weights (full,
partial) the whole fine-tuned model folder.
"""

from __future__ import annotations

from pathlib import Path

from framework import ExportFormat, hookimpl
from framework.export.stage import copy_artifact
from framework.run import Run

NAME = "adapter"


@hookimpl
def tunesmith_provides() -> list[ExportFormat]:
    return [
        ExportFormat(
            NAME,
            writes="the trained adapter (or whole model) as the train stage saved it",
            description="the trained adapter (or whole model) as saved, with tokenizer",
        )
    ]


@hookimpl
def tunesmith_export(name: str, run: Run, path: Path) -> Path | None:
    if name != NAME:
        return None
    return copy_artifact(run, path)

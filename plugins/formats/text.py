"""Plain text for continued pre-training: one ``text`` field per record (``objective=pretrain``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import DataFormat, hookimpl
from framework.data.records import require_object, text_field


@hookimpl
def tunesmith_provides() -> list[DataFormat]:
    return [
        DataFormat(
            "text",
            produces="text",
            description="plain text for continued pre-training: one text field",
        )
    ]


@hookimpl
def tunesmith_parse_record(name: str, record: Any, data_cfg: DictConfig) -> dict | None:
    if name != "text":
        return None
    record = require_object(record)
    return {"text": text_field(record, data_cfg.get("columns"), "text", required=True)}

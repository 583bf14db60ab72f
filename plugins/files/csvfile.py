"""Read CSV (``.csv``) and TSV (``.tsv``) files with a header row (``data.delimiter`` overrides)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import FileType, hookimpl
from plugins.files.readers import read_csv_records


@hookimpl
def tunesmith_provides() -> list[FileType]:
    return [
        FileType(".csv", description="comma-separated values with a header row"),
        FileType(".tsv", description="tab-separated values with a header row"),
    ]


@hookimpl
def tunesmith_read_file(path: Path, data_cfg: DictConfig) -> Iterator[tuple[int, Any]] | None:
    if path.suffix.lower() not in (".csv", ".tsv"):
        return None
    delimiter = data_cfg.get("delimiter")
    return read_csv_records(path, delimiter=str(delimiter) if delimiter else None)

"""Read Parquet (``.parquet``) files with pyarrow; the "line" of a record is its row number."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from framework import FileType, hookimpl
from plugins.files.readers import read_parquet_records


@hookimpl
def tunesmith_provides() -> list[FileType]:
    return [FileType(".parquet", description="Apache Parquet, one record per row (pyarrow)")]


@hookimpl
def tunesmith_read_file(path: Path) -> Iterator[tuple[int, Any]] | None:
    if path.suffix.lower() != ".parquet":
        return None
    return read_parquet_records(path)

"""Read Parquet (``.parquet``) files with pyarrow; the "line" of a record is its row number."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from framework import hookimpl
from plugins.files.readers import read_parquet_records


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"file": [".parquet"]}


@hookimpl
def tunesmith_read_file(path: Path) -> Iterator[tuple[int, Any]] | None:
    if path.suffix.lower() != ".parquet":
        return None
    return read_parquet_records(path)

"""Read JSON lines (``.jsonl``) and JSON (``.json``) files.

A ``.json`` file holds an array of records, an object with one array of records
(``{"data": [...]}``), or an object of records (``{"id1": {...}, "id2": {...}}``); a ``.json``
file that is really JSON lines is read as such. Every record comes with the line it starts on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from framework import FileType, hookimpl
from plugins.files.readers import read_json_records, read_jsonl_records


@hookimpl
def tunesmith_provides() -> list[FileType]:
    return [
        FileType(".jsonl", description="JSON lines: one record per line"),
        FileType(".json", description="a JSON array or object of records (or JSON lines)"),
    ]


@hookimpl
def tunesmith_read_file(path: Path) -> Iterator[tuple[int, Any]] | None:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl_records(path)
    if suffix == ".json":
        return read_json_records(path)
    return None

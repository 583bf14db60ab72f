"""Read JSON lines (``.jsonl``) and JSON (``.json``: an array of records) files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from framework import hookimpl
from framework.errors import RecordError


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"file": [".jsonl", ".json"]}


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, RecordError("not_utf8", f"line is not valid UTF-8 ({exc.reason})")
                continue
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                yield (
                    line_no,
                    RecordError("not_json", f"line is not JSON: {exc.msg} at column {exc.colno}"),
                )


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        yield getattr(exc, "lineno", 1), RecordError("not_json", f"file is not valid JSON: {exc}")
        return
    if isinstance(data, dict):  # {"data": [...]} or {"id": record, ...}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else list(data.values())
    if not isinstance(data, list):
        yield 1, RecordError("not_records", "a .json data file must hold an array of records")
        return
    # for .json files the "line" is the record's index (1-based)
    yield from enumerate(data, start=1)


@hookimpl
def tunesmith_read_file(path: Path) -> Iterator[tuple[int, Any]] | None:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    return None

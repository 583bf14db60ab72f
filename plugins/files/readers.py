"""Reading data files record by record, each record with the line it starts on.

Used by the file plugins (``plugins/files/``). A record that cannot be decoded is yielded as a
:class:`~framework.errors.RecordError` with its line, so the prepare stage rejects it and goes
on; a file that cannot be read at all raises :class:`~framework.errors.DataError`.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from framework.errors import DataError, RecordError

_WS = " \t\n\r"


# ----------------------------------------------------------------------------- JSON


def read_jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, record)`` for every non-blank line of a JSON-lines file."""
    with Path(path).open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    line_no,
                    RecordError(
                        "not_utf8",
                        f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                        f"column {exc.start + 1}: {exc.reason})",
                    ),
                )
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


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _scan_array(text: str, i: int) -> Iterator[tuple[int, Any]]:
    """Yield ``(offset, value)`` for each element of the (valid) JSON array at ``text[i]``."""
    decoder = json.JSONDecoder()
    i = _skip_ws(text, i + 1)
    if text[i] == "]":
        return
    while True:
        value, end = decoder.raw_decode(text, i)
        yield i, value
        i = _skip_ws(text, end)
        if text[i] == "]":
            return
        i = _skip_ws(text, i + 1)  # the comma


def _scan_object(text: str, i: int) -> Iterator[tuple[str, int, Any]]:
    """Yield ``(key, offset, value)`` for each member of the (valid) JSON object at ``text[i]``."""
    decoder = json.JSONDecoder()
    i = _skip_ws(text, i + 1)
    if text[i] == "}":
        return
    while True:
        key, end = decoder.raw_decode(text, i)
        i = _skip_ws(text, _skip_ws(text, end) + 1)  # the colon
        value, end = decoder.raw_decode(text, i)
        yield key, i, value
        i = _skip_ws(text, end)
        if text[i] == "}":
            return
        i = _skip_ws(text, i + 1)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, Mapping):
        return any(_has_surrogate(v) for v in value.values())
    return False


def read_json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, record)`` for the records of a ``.json`` file.

    Raises:
        DataError: the file is not valid JSON, or holds no list of records.
    """
    path = Path(path)
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from read_jsonl_records(path)  # JSON lines saved as .json
            return
        raise DataError(
            f"The file is not valid JSON: {exc.msg}.",
            where=f"{path}:{exc.lineno} (column {exc.colno})",
            hint="fix the file, or save it as JSON lines (.jsonl) so one bad line costs one "
            "record, not the file.",
        ) from None
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def line_of(offset: int) -> int:
        return bisect.bisect_left(newlines, offset) + 1

    start = _skip_ws(text, 0)
    if isinstance(data, list):
        items = _scan_array(text, start)
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        items = ((offset, value) for _, offset, value in _scan_object(text, start))
    elif isinstance(data, dict) and sum(isinstance(v, list) for v in data.values()) == 1:
        key = next(k for k, v in data.items() if isinstance(v, list))
        offset = next(o for k, o, _ in _scan_object(text, start) if k == key)
        items = _scan_array(text, offset)
    else:
        raise DataError(
            "A .json data file must hold an array of records, an object with one array of "
            f"records, or an object of records; this one holds a {type(data).__name__}"
            + (f" with keys {sorted(data)[:8]}" if isinstance(data, dict) else "")
            + ".",
            where=str(path),
            hint="put the records in a top-level array, or use JSON lines (.jsonl).",
        )
    for offset, record in items:
        if _has_surrogate(record):
            yield (
                line_of(offset),
                RecordError("not_utf8", "record holds bytes that are not valid UTF-8"),
            )
        else:
            yield line_of(offset), record


# ----------------------------------------------------------------------------- CSV / TSV


def read_csv_records(path: Path, delimiter: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, row as dict)`` for every row of a CSV or TSV file with a header row.

    Quoted fields may hold the delimiter, quotes (doubled) and newlines; the line given is
    the one the row starts on. Every value is text.

    Args:
        path: the file.
        delimiter: the field separator; ``None``: tab for ``.tsv``, comma otherwise.

    Raises:
        DataError: the file has no header row, or its header has empty or repeated names.
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    consumed = 0
    while True:
        start = consumed + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            consumed = reader.line_num
            if header is None:
                raise DataError(
                    f"The header row cannot be read as CSV: {exc}.", where=f"{path}:{start}"
                ) from None
            message = (
                "a quoted field opened on this row is never closed: the rest of the file was "
                'read into it (a quote inside a quoted field must be doubled: "")'
                if "unexpected end of data" in str(exc)
                else f"row is not valid CSV: {exc}"
            )
            yield start, RecordError("bad_row", message)
            continue
        consumed = reader.line_num
        if not row:  # a blank line
            continue
        if header is None:
            header = [h.strip() for h in row]
            empty = [i + 1 for i, h in enumerate(header) if not h]
            repeated = sorted({h for h in header if header.count(h) > 1})
            if empty or repeated:
                raise DataError(
                    "The header row of a CSV/TSV file must name every column once"
                    + (f"; column(s) {empty} have no name" if empty else "")
                    + (f"; repeated: {repeated}" if repeated else "")
                    + ".",
                    where=f"{path}:{start}",
                    hint="the first row names the columns; map them with data.columns.",
                )
            continue
        if len(row) != len(header):
            yield (
                start,
                RecordError(
                    "bad_row",
                    f"row has {len(row)} fields but the header has {len(header)} "
                    f"({', '.join(header)}); a field holding '{delimiter}' must be quoted",
                ),
            )
            continue
        bad = next((h for h, v in zip(header, row, strict=True) if _has_surrogate(v)), None)
        if bad is not None:
            yield start, RecordError("not_utf8", f"field '{bad}' is not valid UTF-8", field=bad)
            continue
        yield start, dict(zip(header, row, strict=True))
    if header is None:
        raise DataError(
            "The CSV/TSV file is empty: it has no header row.",
            where=str(path),
            hint="the first row must name the columns.",
        )


# ----------------------------------------------------------------------------- Parquet


def read_parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(row number, row as dict)`` for every row of a Parquet file (rows from 1).

    Raises:
        DataError: the file is not a Parquet file pyarrow can read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"The file cannot be read as Parquet: {exc}",
            where=str(path),
            hint="check the file is Parquet (not CSV/JSON with a .parquet name) and complete.",
        ) from None
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, record

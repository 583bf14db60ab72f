"""The ``.qa.txt`` file type and the ``qa`` record shape.

A ``.qa.txt`` file holds question/answer blocks separated by blank lines::

    Q: What is the capital of France?
    A: Paris.

    Q: Translate "bonjour".
    A: Hello.

A question or answer may go on over several lines. Each block becomes the record
``{"question": ..., "answer": ...}`` with the line it starts on; a block that is not
``Q: ...`` then ``A: ...`` is yielded as a :class:`framework.errors.RecordError`, so the
prepare stage rejects it with ``file:line`` into ``rejects.jsonl`` and keeps the others.
``data.format=qa`` turns a record into a one-turn chat (or use ``data.format=alpaca`` with
``data.columns='{instruction: question, output: answer}'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from framework import DataFormat, FileType, hookimpl
from framework.data.records import require_object, text_field
from framework.errors import DataError, RecordError

SUFFIX = ".qa.txt"
FORMAT = "qa"


def blocks(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, lines)`` of each run of non-blank lines (numbers from 1)."""
    start, block = 0, []
    for number, line in enumerate([*lines, ""], start=1):
        if line.strip():
            start = start or number
            block.append(line.rstrip())
        elif block:
            yield start, block
            start, block = 0, []


def parse_block(block: list[str]) -> dict[str, str] | RecordError:
    """``{"question", "answer"}`` from one block, or the RecordError saying what is wrong."""
    if not block[0].startswith("Q:"):
        return RecordError("bad_block", "a block must start with 'Q:'", field="question")
    answer_at = next((i for i, line in enumerate(block) if line.startswith("A:")), None)
    if answer_at is None:
        return RecordError("bad_block", "the block has no 'A:' line", field="answer")
    question = "\n".join([block[0][2:], *block[1:answer_at]]).strip()
    answer = "\n".join([block[answer_at][2:], *block[answer_at + 1 :]]).strip()
    if not question or not answer:
        empty = "question" if not question else "answer"
        return RecordError("empty_field", f"the {empty} is empty", field=empty)
    return {"question": question, "answer": answer}


def read_qa(path: Path) -> Iterator[tuple[int, Any]]:
    """Every block of a ``.qa.txt`` file as ``(line, record or RecordError)``."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text: {exc.reason}.",
            where=f"{path} (byte {exc.start})",
            hint="save the file as UTF-8.",
        ) from exc
    for line, block in blocks(lines):
        yield line, parse_block(block)


@hookimpl
def tunesmith_provides() -> list[Any]:
    return [
        FileType(SUFFIX, description="question/answer blocks: 'Q: ...' then 'A: ...'"),
        DataFormat(FORMAT, produces="chat", description="question + answer -> one-turn chat"),
    ]


@hookimpl
def tunesmith_read_file(path: Path) -> Iterator[tuple[int, Any]] | None:
    return read_qa(path) if path.name.lower().endswith(SUFFIX) else None


@hookimpl
def tunesmith_parse_record(name: str, record: Any, data_cfg: Any) -> dict | None:
    if name != FORMAT:
        return None
    record = require_object(record)
    columns = data_cfg.get("columns")
    question = text_field(record, columns, "question", required=True)
    answer = text_field(record, columns, "answer", required=True)
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }

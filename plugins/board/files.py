"""Safe file access for the board: paths stay inside their root, and half-written files never raise.

Every path a request names is *relative* to one of the board's roots (the output root, the
project data folder). :func:`inside` resolves it and refuses ``..``, absolute paths, and
symlinks that lead out of the root. The readers return ``None`` (or what they could read)
for a file that is missing, cut short, or being written, so that a run in progress or a
killed save never breaks a page.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger(__name__)

#: The most bytes the board reads from one text file (bigger files are cut).
MAX_READ = 20 * 2**20


class OutsideRoot(ValueError):
    """A requested path that is not inside the root it was asked for."""


def inside(root: Path, relative: str | None, must_exist: bool = True) -> Path:
    """Resolve ``relative`` under ``root``; refuse anything that leaves it.

    Args:
        root: the directory requests may read from.
        relative: a relative path with ``/`` separators (``""``: the root itself).
        must_exist: raise when the resolved path does not exist.

    Returns:
        The resolved absolute path (symlinks followed, still inside ``root``).

    Raises:
        OutsideRoot: an absolute path, a ``..`` part, a NUL byte, a symlink that points
            out of ``root``, or (with ``must_exist``) a path that does not exist.
    """
    text = str(relative or "")
    if "\x00" in text or "\\" in text:
        raise OutsideRoot(f"bad characters in path {text!r}")
    pure = PurePosixPath(text)
    if pure.is_absolute() or text.startswith("~"):
        raise OutsideRoot(f"absolute path {text!r}")
    if any(part == ".." for part in pure.parts):
        raise OutsideRoot(f"'..' in path {text!r}")
    base = Path(root).resolve()
    target = (base / pure).resolve()
    if target != base and base not in target.parents:
        raise OutsideRoot(f"{text!r} leads out of {base}")
    if must_exist and not target.exists():
        raise OutsideRoot(f"{text!r} does not exist")
    return target


def relative_to(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators (``""`` for the root)."""
    rel = Path(path).resolve().relative_to(Path(root).resolve())
    return "" if str(rel) == "." else rel.as_posix()


def read_text(path: Path, limit: int = MAX_READ) -> str | None:
    """The text of ``path`` (at most ``limit`` bytes, undecodable bytes replaced), or ``None``."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(limit)
    except OSError:
        return None
    return data.decode("utf-8-sig", errors="replace")


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing, empty or cut short."""
    text = read_text(path)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        log.debug("%s is not valid JSON (being written?)", path)
        return None


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """The JSON objects of a JSON-lines file; lines that do not parse (a last line cut
    short by a stopped write) are skipped."""
    text = read_text(path)
    rows: list[dict] = []
    if not text:
        return rows
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def read_yaml(path: Path) -> Any:
    """The YAML in ``path`` (plain data, no tags), or ``None`` when missing or broken."""
    import yaml

    text = read_text(path)
    if not text:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header; a last row cut short is dropped."""
    text = read_text(path)
    if not text:
        return []
    complete = text if text.endswith("\n") else text.rsplit("\n", 1)[0] + "\n"
    try:
        reader = csv.DictReader(io.StringIO(complete))
        fields = reader.fieldnames or []
        return [row for row in reader if None not in row and len(row) == len(fields)]
    except csv.Error:
        return []

"""Judge in the page: the blinded A/B sheet of :mod:`framework.evaluate.human_eval`, plus
absolute 1-5 ratings.

A/B preferences are written into the same ``human_eval/sheet.csv`` the CSV export makes
(its ``preferred`` and ``comment`` columns), and after every answer the sheet is imported
with :func:`framework.evaluate.human_eval.import_dir`, which writes ``results.json`` and
``results.md`` exactly as ``stages=[human_eval_import]`` does. So judging is resumable (the
sheet is the state), and a sheet can be half judged in the page and finished in a
spreadsheet, or the other way round.

Absolute ratings (one score per criterion per answer) go to ``human_eval/ratings.csv``, the
ratings sheet the CSV export writes, and are imported the same way: their means per side
(unblinded with ``key.json``) land in ``results.json`` under ``ratings``.
"""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

from framework.errors import DataError
from framework.evaluate import human_eval as he
from framework.run import atomic_path

FOLDER = "human_eval"
#: Criteria rated 1-5 when the board config names none: those of the ratings sheet.
DEFAULT_CRITERIA = he.CRITERIA
SCALE = (1, 5)

_lock = threading.Lock()


def folder_of(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER


def start(run_dir: Path, seed: int = 0, max_items: int | None = None) -> Path:
    """The run's sheet, exported (base vs tuned) unless one is there already (resume)."""
    folder = folder_of(run_dir)
    sheet = folder / he.SHEET
    with _lock:
        if sheet.is_file() and (folder / he.KEY).is_file():
            return sheet
        predictions = he.predictions_file(run_dir)
        a = he.Side("base", predictions, "base")
        b = he.Side("tuned", predictions, "tuned")
        he.export_sheet(a, b, folder, seed=seed, max_items=max_items)
    return sheet


def _raw_rows(sheet: Path) -> tuple[list[str], list[dict[str, str]]]:
    with sheet.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or he.COLUMNS), [dict(r) for r in reader]


def _write_rows(sheet: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    with atomic_path(sheet) as tmp, tmp.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def state(run_dir: Path, criteria: list[str]) -> dict[str, Any]:
    """Items of the sheet (blinded), the answers given so far, and the results so far."""
    folder = folder_of(run_dir)
    sheet = folder / he.SHEET
    if not sheet.is_file():
        return {"started": False, "items": []}
    rows = he._read_sheet(sheet)  # validates the header like the import does
    ratings = _read_ratings(folder)
    items = []
    for _line, row in rows:
        item = row.get("item", "")
        items.append(
            {
                "item": item,
                "prompt": row.get("prompt", ""),
                "reference": row.get("reference", ""),
                "answer_A": row.get("answer_A", ""),
                "answer_B": row.get("answer_B", ""),
                "preferred": he.CHOICES.get(row.get("preferred", "").lower(), ""),
                "comment": row.get("comment", ""),
                "ratings": {ans: ratings.get((item, ans), {}) for ans in ("A", "B")},
            }
        )
    results = None
    results_file = folder / he.RESULTS
    if results_file.is_file():
        try:
            results = json.loads(results_file.read_text(encoding="utf-8"))
        except ValueError:
            results = None
    rated = sum(1 for it in items if it["preferred"])
    return {
        "started": True,
        "items": items,
        "scored": rated,
        "criteria": criteria,
        "results": results,
        "ratings_results": _summary_file(folder),
        "next": next((it["item"] for it in items if not it["preferred"]), None),
    }


def prefer(run_dir: Path, item: str, preferred: str, comment: str = "") -> dict[str, Any]:
    """Record a preference (``A``, ``B``, ``tie``; ``""`` clears it) for ``item``, then
    import the sheet; returns the import's results.

    Raises:
        DataError: no sheet yet, an unknown item, or a preference other than A/B/tie.
    """
    folder = folder_of(run_dir)
    sheet = folder / he.SHEET
    value = (preferred or "").strip()
    if value and value.lower() not in he.CHOICES:
        raise DataError(f"'{value}' is not a preference.", hint="give A, B or tie.")
    with _lock:
        if not sheet.is_file():
            raise DataError("There is no sheet to judge yet.", hint="start judging first.")
        fields, rows = _raw_rows(sheet)
        for row in rows:
            if row.get("item") == item:
                row["preferred"] = he.CHOICES[value.lower()] if value else ""
                row["comment"] = comment
                break
        else:
            raise DataError(f"Item '{item}' is not in the sheet.", where=str(sheet))
        _write_rows(sheet, fields, rows)
        return he.import_dir(folder)


# --------------------------------------------------------------------------- absolute ratings


def _read_ratings(folder: Path) -> dict[tuple[str, str], dict[str, int]]:
    """The scores given so far in ``ratings.csv`` (the sheet of :mod:`human_eval`)."""
    path = folder / he.RATINGS
    out: dict[tuple[str, str], dict[str, int]] = {}
    if not path.is_file():
        return out
    try:
        rows = he.read_ratings(path)
    except (DataError, OSError, csv.Error, UnicodeDecodeError):
        return {}  # half-written or hand-broken: the page still opens
    for line, row in rows:
        scores: dict[str, int] = {}
        for c in he.CRITERIA:
            try:
                value = he.parse_rating(row.get(c, ""), f"{path}:{line}")
            except DataError:
                value = None
            if value is not None:
                scores[c] = value
        out[(row.get("item", ""), row.get("answer", "").upper())] = scores
    return out


def rate(
    run_dir: Path, item: str, answer: str, scores: dict[str, Any], criteria: list[str]
) -> dict:
    """Record absolute scores (``{criterion: 1..5}``) for one answer (``A``/``B``) of ``item``
    in ``ratings.csv``, then import it as ``stages=[human_eval_import]`` does; returns the
    ``ratings`` part of ``results.json`` (mean per side and criterion).

    Raises:
        DataError: no sheet, an unknown item / answer / criterion, or a score off the scale.
    """
    folder = folder_of(run_dir)
    if answer not in ("A", "B"):
        raise DataError(f"'{answer}' is not an answer of the sheet.", hint="give A or B.")
    allowed = [c for c in criteria if c in he.CRITERIA] or list(he.CRITERIA)
    clean: dict[str, str] = {}
    for key, value in scores.items():
        if key not in allowed:
            raise DataError(f"'{key}' is not a rated criterion.", hint=f"one of {allowed}.")
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if not SCALE[0] <= number <= SCALE[1]:
            raise DataError(f"{key}: '{value}' is off the scale.", hint="give 1 to 5.")
        clean[key] = str(number)
    with _lock:
        sheet = folder / he.SHEET
        if not sheet.is_file():
            raise DataError("There is no sheet to judge yet.", hint="start judging first.")
        path = folder / he.RATINGS
        if not path.is_file():  # the same blinded sheet the CSV export writes
            he.write_ratings_sheet(path, [row for _line, row in he._read_sheet(sheet)])
        rows = [row for _line, row in he.read_ratings(path)]
        target = next(
            (r for r in rows if r.get("item") == item and r.get("answer", "").upper() == answer),
            None,
        )
        if target is None:
            raise DataError(f"Item '{item}' is not in the sheet.", where=str(path))
        target.update(clean)
        _write_rows(path, list(he.RATING_COLUMNS), rows)
        results = he.import_dir(folder)
    return results.get("ratings") or {}


def _summary_file(folder: Path) -> dict | None:
    """The ``ratings`` part of ``results.json``, if ratings were imported."""
    path = folder / he.RESULTS
    try:
        results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        return None
    return (results or {}).get("ratings")

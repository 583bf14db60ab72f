"""Judge in the page: the blinded A/B sheet of :mod:`framework.evaluate.human_eval`, plus
absolute 1-5 ratings.

A/B preferences are written into the same ``human_eval/sheet.csv`` the CSV export makes
(its ``preferred`` and ``comment`` columns), and after every answer the sheet is imported
with :func:`framework.evaluate.human_eval.import_dir`, which writes ``results.json`` and
``results.md`` exactly as ``stages=[human_eval_import]`` does. So judging is resumable (the
sheet is the state), and a sheet can be half judged in the page and finished in a
spreadsheet, or the other way round.

Absolute ratings (one score per criterion per answer) go to ``human_eval/ratings.csv``;
their means per side (unblinded with ``key.json``) to ``human_eval/ratings.json``.
"""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

from framework.errors import DataError
from framework.evaluate import human_eval as he
from framework.run import atomic_path, write_json

FOLDER = "human_eval"
RATINGS = "ratings.csv"
RATINGS_RESULTS = "ratings.json"
#: Criteria rated 1-5 when the board config names none.
DEFAULT_CRITERIA = ("correctness", "reasonableness", "fluency", "diversity")
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
    path = folder / RATINGS
    out: dict[tuple[str, str], dict[str, int]] = {}
    if not path.is_file():
        return out
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f):
                scores = {}
                for key, value in row.items():
                    if key in ("item", "answer", "comment") or not key:
                        continue
                    try:
                        scores[key] = int(value)
                    except (TypeError, ValueError):
                        continue
                out[(row.get("item", ""), row.get("answer", ""))] = scores
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return out


def rate(
    run_dir: Path, item: str, answer: str, scores: dict[str, Any], criteria: list[str]
) -> dict:
    """Record absolute scores (``{criterion: 1..5}``) for one answer (``A``/``B``) of ``item``;
    returns the means per side.

    Raises:
        DataError: no sheet, an unknown item / answer / criterion, or a score off the scale.
    """
    folder = folder_of(run_dir)
    if answer not in ("A", "B"):
        raise DataError(f"'{answer}' is not an answer of the sheet.", hint="give A or B.")
    clean: dict[str, int] = {}
    for key, value in scores.items():
        if key not in criteria:
            raise DataError(f"'{key}' is not a rated criterion.", hint=f"one of {criteria}.")
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if not SCALE[0] <= number <= SCALE[1]:
            raise DataError(f"{key}: '{value}' is off the scale.", hint="give 1 to 5.")
        clean[key] = number
    with _lock:
        sheet = folder / he.SHEET
        if not sheet.is_file():
            raise DataError("There is no sheet to judge yet.", hint="start judging first.")
        items = {row.get("item") for _line, row in he._read_sheet(sheet)}
        if item not in items:
            raise DataError(f"Item '{item}' is not in the sheet.", where=str(sheet))
        ratings = _read_ratings(folder)
        ratings[(item, answer)] = {**ratings.get((item, answer), {}), **clean}
        with (
            atomic_path(folder / RATINGS) as tmp,
            tmp.open("w", encoding="utf-8-sig", newline="") as f,
        ):
            writer = csv.DictWriter(f, fieldnames=["item", "answer", *criteria])
            writer.writeheader()
            for (it, ans), values in sorted(ratings.items()):
                writer.writerow(
                    {"item": it, "answer": ans, **{c: values.get(c, "") for c in criteria}}
                )
        summary = _summarize_ratings(folder, ratings, criteria)
        write_json(folder / RATINGS_RESULTS, summary)
    return summary


def _summarize_ratings(folder: Path, ratings: dict, criteria: list[str]) -> dict[str, Any]:
    key = json.loads((folder / he.KEY).read_text(encoding="utf-8"))
    sides: dict[str, dict[str, list[int]]] = {s: {c: [] for c in criteria} for s in key["sides"]}
    for (item, answer), values in ratings.items():
        side = key["items"].get(item, {}).get(answer)
        if side not in sides:
            continue
        for c, v in values.items():
            if c in sides[side]:
                sides[side][c].append(v)
    return {
        "scale": list(SCALE),
        "sides": {
            s: {c: {"mean": sum(v) / len(v) if v else None, "n": len(v)} for c, v in cs.items()}
            for s, cs in sides.items()
        },
    }


def _summary_file(folder: Path) -> dict | None:
    path = folder / RATINGS_RESULTS
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        return None

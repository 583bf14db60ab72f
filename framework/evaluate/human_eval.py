"""Human evaluation: blinded sheets of answers to score, and the win rates and ratings they give.

``export``: for each prompt, the two answers (base vs tuned of one run, or one side of two
runs) go into ``sheet.csv`` in random order as ``answer_A`` / ``answer_B``, with an empty
``preferred`` column (the A/B comparison), and into ``ratings.csv``, one row per answer,
with empty 1-5 columns for :data:`CRITERIA` (absolute ratings: correctness, reasonableness,
fluency, diversity). Which side is A is written only to ``key.json``, kept apart from the
sheets. ``import``: read the filled sheets with the key and count, per side, the share of
scored items it won, tied and lost, and the mean rating per criterion.

The functions here are plain (paths in, dicts out), so another front end (a web board) can
write and read the same sheets.

From the command line (outside a run)::

    python -m framework.evaluate.human_eval export outputs/runs/<run>            # base vs tuned
    python -m framework.evaluate.human_eval export runA --vs runB --side tuned   # two runs
    python -m framework.evaluate.human_eval import outputs/runs/<run>/human_eval

or as stages of a run: ``stages=[human_eval_export]`` / ``stages=[human_eval_import]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.errors import DataError, TunesmithError
from framework.run import atomic_path, read_jsonl, write_json

log = logging.getLogger(__name__)

SHEET = "sheet.csv"
RATINGS = "ratings.csv"
KEY = "key.json"
RESULTS = "results.json"
#: What each answer is rated on, 1 (bad) to 5 (good), in ``ratings.csv``.
CRITERIA = ("correctness", "reasonableness", "fluency", "diversity")
RATING_COLUMNS = ("item", "answer", "prompt", "reference", "text", *CRITERIA, "comment")
RATING_INSTRUCTIONS = (
    "Rate each answer from 1 (bad) to 5 (good) on correctness (agrees with the facts and the "
    "reference), reasonableness (a sensible answer to this prompt), fluency (natural, "
    "grammatical language) and diversity (not repetitive, not the same stock answer as the "
    "others). Leave a cell blank to skip it."
)
COLUMNS = ("item", "prompt", "reference", "answer_A", "answer_B", "preferred", "comment")
#: What a rater may write in ``preferred`` (case-insensitive); blank means not scored yet.
CHOICES = {"a": "A", "b": "B", "tie": "tie", "=": "tie", "same": "tie", "both": "tie"}
INSTRUCTIONS = (
    "Fill the 'preferred' column of each row: A (answer_A is better), B (answer_B is "
    "better) or tie. Leave it blank to skip a row. Do not open key.json until scoring is done."
)


@dataclass
class Side:
    """One side of the comparison: a label and where its answers come from."""

    label: str
    predictions: Path
    field: str


def predictions_file(path: Path) -> Path:
    """``predictions.jsonl`` of a run directory, or the file itself."""
    path = Path(path).expanduser()
    target = path / "predictions.jsonl" if path.is_dir() else path
    if not target.is_file():
        raise DataError(
            f"No predictions to compare in '{path}'.",
            where=str(target),
            hint="run the evaluate stage first (stages=[evaluate]); it writes predictions.jsonl.",
        )
    return target


def _prompt_text(row: dict) -> str:
    messages = row.get("messages")
    if not messages:
        return str(row.get("prompt", ""))
    if len(messages) == 1:
        return str(messages[0]["content"])
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)


def merged_rows(path: Path) -> list[dict]:
    """Rows of a predictions file, one per example (an unfinished evaluation writes a row
    per side and batch; they are merged by example id)."""
    merged: dict[Any, dict] = {}
    for row in read_jsonl(path):
        merged.setdefault(row.get("id") or row.get("prompt"), {}).update(row)
    return list(merged.values())


def pair_answers(a: Side, b: Side) -> list[dict[str, Any]]:
    """The prompts both sides answered, with both answers (matched by example id/prompt)."""
    rows_a = merged_rows(a.predictions)
    by_key = {(r.get("id") or r.get("prompt")): r for r in merged_rows(b.predictions)}
    pairs = []
    for r in rows_a:
        other = by_key.get(r.get("id") or r.get("prompt"))
        if other is None or a.field not in r or b.field not in other:
            continue
        pairs.append(
            {
                "id": r.get("id"),
                "prompt": _prompt_text(r),
                "reference": r.get("reference", ""),
                a.label: r[a.field],
                b.label: other[b.field],
            }
        )
    if not pairs:
        raise DataError(
            f"No prompt has both a '{a.field}' answer in {a.predictions} and a '{b.field}' "
            f"answer in {b.predictions}.",
            where=f"{a.predictions}, {b.predictions}",
            hint="evaluate both sides on the same examples first (evaluator.compare_base=true "
            "gives base and tuned).",
        )
    return pairs


def export_sheet(
    a: Side,
    b: Side,
    out_dir: Path,
    seed: int = 0,
    max_items: int | None = None,
    with_reference: bool = True,
) -> tuple[Path, Path]:
    """Write the blinded ``sheet.csv`` and its ``key.json`` under ``out_dir``.

    Items are shuffled and each item's two answers are put in random order (seeded), so
    neither position nor order tells the rater which side wrote an answer.

    Args:
        a: the first side (e.g. ``base``).
        b: the second side (e.g. ``tuned``).
        out_dir: where to write (created).
        seed: seeds the shuffling.
        max_items: keep at most this many items.
        with_reference: include the reference answer as a column.

    Returns:
        ``(sheet path, key path)``.

    Raises:
        DataError: the sheet exists and has scores in it (never overwritten), or the two
            sides share no prompt.
    """
    if a.label == b.label:
        raise TunesmithError(
            f"Both sides are called '{a.label}'.", hint="give the two sides different labels."
        )
    out_dir = Path(out_dir)
    sheet = out_dir / SHEET
    if sheet.exists() and any(row["preferred"] for _, row in _read_sheet(sheet)):
        raise DataError(
            "This sheet already has scores; it is not overwritten.",
            where=str(sheet),
            hint="import it (human_eval_import), or move it away to export a new one.",
        )
    if (out_dir / RATINGS).exists() and any(
        any(row.get(c) for c in CRITERIA) for _, row in read_ratings(out_dir / RATINGS)
    ):
        raise DataError(
            "This ratings sheet already has ratings; it is not overwritten.",
            where=str(out_dir / RATINGS),
            hint="import it (human_eval_import), or move it away to export a new one.",
        )
    rng = random.Random(seed)
    pairs = pair_answers(a, b)
    rng.shuffle(pairs)
    if max_items:
        pairs = pairs[: int(max_items)]
    key_items = {}
    rows = []
    for n, pair in enumerate(pairs, 1):
        item = f"{n:04d}"
        first, second = (a.label, b.label) if rng.random() < 0.5 else (b.label, a.label)
        key_items[item] = {"A": first, "B": second, "id": pair["id"]}
        rows.append(
            {
                "item": item,
                "prompt": pair["prompt"],
                "reference": pair["reference"] if with_reference else "",
                "answer_A": pair[first],
                "answer_B": pair[second],
                "preferred": "",
                "comment": "",
            }
        )
    _write_csv(sheet, COLUMNS, rows)
    write_ratings_sheet(out_dir / RATINGS, rows)
    write_json(
        out_dir / KEY,
        {
            "sides": {
                a.label: {"predictions": str(a.predictions), "field": a.field},
                b.label: {"predictions": str(b.predictions), "field": b.field},
            },
            "seed": seed,
            "instructions": INSTRUCTIONS,
            "items": key_items,
        },
    )
    log.info("wrote %d items to %s (key: %s). %s", len(pairs), sheet, out_dir / KEY, INSTRUCTIONS)
    return sheet, out_dir / KEY


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV, UTF-8 with a BOM (spreadsheets then show Chinese), atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def ratings_rows(items: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The rows of a ratings sheet: one per answer of each A/B item, criteria left blank.

    Args:
        items: rows of the A/B sheet (``item``, ``prompt``, ``reference``, ``answer_A``,
            ``answer_B``).

    Returns:
        ``{"item", "answer" ("A" or "B"), "prompt", "reference", "text", <criteria>: "",
        "comment": ""}`` for each answer, in item order.
    """
    out = []
    for row in items:
        for letter in ("A", "B"):
            out.append(
                {
                    "item": row["item"],
                    "answer": letter,
                    "prompt": row.get("prompt", ""),
                    "reference": row.get("reference", ""),
                    "text": row[f"answer_{letter}"],
                    **{c: "" for c in CRITERIA},
                    "comment": "",
                }
            )
    return out


def write_ratings_sheet(path: Path, items: list[dict[str, Any]]) -> Path:
    """Write the blinded ratings sheet (:data:`RATING_COLUMNS`) for the A/B ``items``.

    Each answer gets a row with empty 1-5 cells for :data:`CRITERIA`; it is named only by
    its item and letter, so the key (``key.json``) is needed to tell the sides apart.
    """
    _write_csv(Path(path), RATING_COLUMNS, ratings_rows(items))
    return Path(path)


def read_ratings(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` of each row of a ratings sheet (the header is line 1).

    Raises:
        DataError: the file cannot be read, or lacks the ``item`` / ``answer`` columns.
    """
    return _read_csv(path, {"item", "answer"}, "human_eval_export wrote")


def parse_rating(value: str, where: str) -> int | None:
    """A rating cell as an int from 1 to 5 (``None`` when blank).

    Raises:
        DataError: anything else (naming ``where``).
    """
    value = (value or "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (1 <= number <= 5) or number != int(number):
        raise DataError(
            f"'{value}' is not a rating.",
            where=where,
            hint="write a whole number from 1 (bad) to 5 (good), or leave the cell blank.",
        )
    return int(number)


def import_ratings(ratings: Path, key: Path) -> dict[str, Any]:
    """Read a filled ratings sheet with its key: the mean rating per side and criterion.

    Returns:
        ``{"answers", "rated", "sides": {label: {criterion: {"mean": float | None,
        "count": int}}}}``: ``rated`` counts the answers with at least one rating; a mean
        is ``None`` while nobody rated that criterion for that side.

    Raises:
        DataError: a cell is not a rating from 1 to 5, or a row's item/answer is not in the key.
    """
    key_data = json.loads(Path(key).read_text(encoding="utf-8"))
    items = key_data["items"]
    labels = list(key_data["sides"])
    sums = {s: {c: [0, 0] for c in CRITERIA} for s in labels}
    answers = rated = 0
    for line, row in read_ratings(ratings):
        item, letter = row.get("item", ""), row.get("answer", "").upper()
        if item not in items or letter not in ("A", "B"):
            raise DataError(
                f"Item '{item}' answer '{letter}' is not in the key.",
                where=f"{ratings}:{line}",
                hint=f"was the ratings sheet exported together with {key}?",
            )
        side = items[item][letter]
        answers += 1
        got = False
        for c in CRITERIA:
            value = parse_rating(row.get(c, ""), f"{ratings}:{line} column {c}")
            if value is not None:
                sums[side][c][0] += value
                sums[side][c][1] += 1
                got = True
        rated += got
    sides = {
        s: {c: {"mean": (t / n if n else None), "count": n} for c, (t, n) in crit.items()}
        for s, crit in sums.items()
    }
    return {"answers": answers, "rated": rated, "sides": sides}


def ratings_table(ratings: dict[str, Any]) -> str:
    """The mean ratings as a Markdown table (side by criterion), or what to do when empty."""
    if not ratings["rated"]:
        return (
            f"None of the {ratings['answers']} answers is rated yet: write 1-5 in the "
            f"{', '.join(CRITERIA)} columns of ratings.csv, then import again."
        )
    head = "| side | " + " | ".join(CRITERIA) + " |"
    lines = [
        f"{ratings['rated']} of {ratings['answers']} answers rated (mean, 1-5).",
        "",
        head,
        "|---|" + "---:|" * len(CRITERIA),
    ]
    for side, crit in ratings["sides"].items():
        cells = [
            f"{crit[c]['mean']:.2f} (n={crit[c]['count']})" if crit[c]["mean"] is not None else "-"
            for c in CRITERIA
        ]
        lines.append(f"| {side} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _read_sheet(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` of each row of a sheet (the header is line 1)."""
    return _read_csv(path, {"item", "preferred"}, "human_eval_export wrote")


def _read_csv(path: Path, needed: set[str], origin: str) -> list[tuple[int, dict[str, str]]]:
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = needed - set(reader.fieldnames or [])
            if missing:
                raise DataError(
                    f"The sheet has no {sorted(missing)} column.",
                    where=f"{path}:1",
                    hint=f"import the sheet {origin}, with its header row.",
                )
            return [
                (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k})
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"Cannot read the sheet: {exc}", where=str(path)) from exc


def import_sheet(sheet: Path, key: Path) -> dict[str, Any]:
    """Read a filled sheet with its key and compute win / tie / loss rates per side.

    Rates are shares of the scored items (blank ``preferred`` cells are counted as
    ``unscored``, not as ties).

    Returns:
        ``{"items", "scored", "unscored", "sides": {label: {"wins", "ties", "losses",
        "win_rate", "tie_rate", "loss_rate"}}}``.

    Raises:
        DataError: a cell holds something other than A, B or tie, or an item is not in the key.
    """
    key_data = json.loads(Path(key).read_text(encoding="utf-8"))
    items = key_data["items"]
    labels = list(key_data["sides"])
    counts = {s: {"wins": 0, "ties": 0, "losses": 0} for s in labels}
    scored = unscored = 0
    for line, row in _read_sheet(sheet):
        item = row.get("item", "")
        if item not in items:
            raise DataError(
                f"Item '{item}' is not in the key.",
                where=f"{sheet}:{line}",
                hint=f"was the sheet exported together with {key}?",
            )
        value = row.get("preferred", "")
        if not value:
            unscored += 1
            continue
        choice = CHOICES.get(value.lower())
        if choice is None:
            raise DataError(
                f"'{value}' is not a preference.",
                where=f"{sheet}:{line} column preferred",
                hint="write A, B or tie (or leave it blank to skip the row).",
            )
        scored += 1
        if choice == "tie":
            for s in labels:
                counts[s]["ties"] += 1
            continue
        winner = items[item][choice]
        for s in labels:
            counts[s]["wins" if s == winner else "losses"] += 1
    sides = {}
    for s, c in counts.items():
        sides[s] = {
            **c,
            # no rate before any item is scored (null in results.json, not NaN)
            "win_rate": c["wins"] / scored if scored else None,
            "tie_rate": c["ties"] / scored if scored else None,
            "loss_rate": c["losses"] / scored if scored else None,
        }
    return {"items": scored + unscored, "scored": scored, "unscored": unscored, "sides": sides}


def summary_table(results: dict[str, Any]) -> str:
    """The rates as a Markdown table (or what to do when nothing is scored yet)."""
    if not results["scored"]:
        return (
            f"None of the {results['items']} items is scored yet: write A, B or tie in the "
            "'preferred' column of the sheet, then import it again."
        )
    lines = [
        f"{results['scored']} of {results['items']} items scored.",
        "",
        "| side | win | tie | loss |",
        "|---|---:|---:|---:|",
    ]
    for s, r in results["sides"].items():
        lines.append(f"| {s} | {r['win_rate']:.1%} | {r['tie_rate']:.1%} | {r['loss_rate']:.1%} |")
    return "\n".join(lines)


def import_dir(
    folder: Path, sheet: Path | None = None, ratings: Path | None = None
) -> dict[str, Any]:
    """Import the A/B sheet and the ratings sheet with ``folder/key.json``; write the results.

    Args:
        folder: the folder with ``key.json`` (``human_eval/`` of a run).
        sheet: the filled A/B sheet (default ``folder/sheet.csv``).
        ratings: the filled ratings sheet (default ``folder/ratings.csv``, when it exists).

    Returns:
        What :func:`import_sheet` returns, plus ``"ratings"`` (:func:`import_ratings`) when
        there is a ratings sheet; also written to ``results.json`` and ``results.md``.
    """
    folder = Path(folder)
    key = folder / KEY
    if not key.is_file():
        raise DataError(
            "There is no key to unblind the sheet with.",
            where=str(key),
            hint="export a sheet first (human_eval_export); the key is written beside it.",
        )
    results = import_sheet(Path(sheet) if sheet else folder / SHEET, key)
    ratings_path = Path(ratings) if ratings else folder / RATINGS
    if ratings or ratings_path.is_file():
        results["ratings"] = import_ratings(ratings_path, key)
    write_json(folder / RESULTS, results)
    with atomic_path(folder / "results.md") as tmp:
        tmp.write_text("# Human evaluation\n\n" + full_summary(results) + "\n", encoding="utf-8")
    return results


def full_summary(results: dict[str, Any]) -> str:
    """The A/B table and, when there are ratings, the ratings table (Markdown)."""
    text = summary_table(results)
    if "ratings" in results:
        text += "\n\n" + ratings_table(results["ratings"])
    return text


# --------------------------------------------------------------------------- stages


def _stage_cfg(run: Any) -> Any:
    from omegaconf import OmegaConf

    return run.cfg.evaluator.get("human_eval") or OmegaConf.create({})


def export_stage(run: Any) -> tuple[Path, Path]:
    """The ``human_eval_export`` stage: a sheet from this run's predictions.

    Keys (``evaluator.human_eval.*``): ``vs`` (another run: compare this run's ``side``
    answers with its own), ``side``, ``labels``, ``seed``, ``max_items``, ``with_reference``.
    """
    from framework.data.prepare import original_cwd

    h = _stage_cfg(run)
    vs = h.get("vs")
    if vs:
        vs = Path(str(vs)).expanduser()
        vs = vs if vs.is_absolute() else original_cwd() / vs
    labels = [str(x) for x in h.get("labels")] if h.get("labels") else None
    a, b = _sides(run.dir, vs, str(h.get("side", "tuned")), labels)
    sheet, key = export_sheet(
        a,
        b,
        run.dir / "human_eval",
        seed=int(h.get("seed", run.cfg.get("seed", 0))),
        max_items=h.get("max_items"),
        with_reference=bool(h.get("with_reference", True)),
    )
    print(
        f"human evaluation sheet: {sheet}\nratings sheet: {sheet.parent / RATINGS}\n"
        f"key (keep it from the raters): {key}\n{INSTRUCTIONS}\n{RATING_INSTRUCTIONS}"
    )
    return sheet, key


def import_stage(run: Any) -> dict[str, Any]:
    """The ``human_eval_import`` stage: read the filled sheet (``evaluator.human_eval.sheet``,
    default ``human_eval/sheet.csv``) and ratings (``evaluator.human_eval.ratings``, default
    ``human_eval/ratings.csv``) and store the results under ``run.metrics["human_eval"]``."""
    from framework.data.prepare import original_cwd

    def given(key: str) -> Path | None:
        value = _stage_cfg(run).get(key)
        if not value:
            return None
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else original_cwd() / path

    results = import_dir(run.dir / "human_eval", given("sheet"), given("ratings"))
    run.metrics["human_eval"] = results
    print(full_summary(results))
    return results


# --------------------------------------------------------------------------- command line


def _sides(run: Path, vs: Path | None, side: str, labels: list[str] | None) -> tuple[Side, Side]:
    first = predictions_file(run)
    if vs is None:
        la, lb = labels or ["base", "tuned"]
        return Side(la, first, "base"), Side(lb, first, "tuned")
    second = predictions_file(vs)
    la, lb = labels or [Path(run).name or "A", Path(vs).name or "B"]
    if la == lb:
        la, lb = f"{la} (1)", f"{lb} (2)"
    return Side(la, first, side), Side(lb, second, side)


def main(argv: list[str] | None = None) -> int:
    """``python -m framework.evaluate.human_eval export|import ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m framework.evaluate.human_eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser(
        "export", help="write blinded sheet.csv (A/B) and ratings.csv (1-5), and key.json"
    )
    ex.add_argument("run", type=Path, help="a run directory (or a predictions.jsonl)")
    ex.add_argument("--vs", type=Path, help="a second run: compare its answers with the first's")
    ex.add_argument("--side", default="tuned", help="with --vs: which side of each run (tuned)")
    ex.add_argument("--labels", nargs=2, help="names of the two sides in the key and results")
    ex.add_argument("--out", type=Path, help="output folder (default: <run>/human_eval)")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--max-items", type=int)
    ex.add_argument("--no-reference", action="store_true", help="leave the reference out")
    im = sub.add_parser(
        "import", help="read the filled sheets: win/tie/loss and mean ratings per side"
    )
    im.add_argument("folder", type=Path, help="the folder with key.json (and sheet.csv)")
    im.add_argument("--sheet", type=Path, help="the filled sheet, if it is not folder/sheet.csv")
    im.add_argument(
        "--ratings", type=Path, help="the filled ratings, if they are not folder/ratings.csv"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "export":
            a, b = _sides(args.run, args.vs, args.side, args.labels)
            run_dir = args.run if args.run.is_dir() else args.run.parent
            sheet, key = export_sheet(
                a,
                b,
                args.out or run_dir / "human_eval",
                args.seed,
                args.max_items,
                not args.no_reference,
            )
            print(
                f"sheet:   {sheet}\nratings: {sheet.parent / RATINGS}\nkey:     {key}\n"
                f"{INSTRUCTIONS}\n{RATING_INSTRUCTIONS}"
            )
        else:
            results = import_dir(args.folder, args.sheet, args.ratings)
            print(full_summary(results))
    except TunesmithError as err:
        print(f"error: {err.format()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

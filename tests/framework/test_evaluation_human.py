"""Blinded human evaluation: export a sheet, fill it as a rater would, import the rates."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from framework.errors import DataError
from framework.evaluate.human_eval import KEY, SHEET, Side, export_sheet, import_dir, main
from framework.pipeline import run_pipeline
from framework.resolvers import ROOT_DIR
from tests.conftest import compose_config


def _predictions(folder: Path, n: int = 12, field_a: str = "base", field_b: str = "tuned") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "predictions.jsonl"
    rows = [
        {
            "id": f"ex{i}",
            "messages": [{"role": "user", "content": f"问题 {i}: what is {i} + {i}?"}],
            "prompt": f"<|im_start|>user\nq{i}<|im_end|>\n",
            "reference": str(2 * i),
            field_a: f"reply one to {i}",
            field_b: f"reply two to {i}",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def _read(sheet: Path) -> list[dict[str, str]]:
    with sheet.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def _write(sheet: Path, rows: list[dict[str, str]]) -> None:
    with sheet.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_sheet_is_blinded_and_the_round_trip_gives_win_rates(tmp_path: Path) -> None:
    preds = _predictions(tmp_path / "run")
    sheet, key = export_sheet(
        Side("base", preds, "base"), Side("tuned", preds, "tuned"), tmp_path / "he", seed=3
    )
    assert sheet.parent == key.parent and sheet != key
    rows = _read(sheet)
    assert len(rows) == 12
    text = sheet.read_text(encoding="utf-8-sig")
    assert "base" not in text and "tuned" not in text  # nothing names a side
    assert all(r["preferred"] == "" for r in rows)
    assert "问题" in text  # Chinese survives (UTF-8 with BOM, so spreadsheets open it)
    items = json.loads(key.read_text())["items"]
    # answers are in random order: each side is "A" on some items and "B" on others
    firsts = {items[r["item"]]["A"] for r in rows}
    assert firsts == {"base", "tuned"}
    for r in rows:  # the key really says who wrote what
        assert r[f"answer_{'A' if items[r['item']]['A'] == 'base' else 'B'}"].startswith(
            "reply one"
        )

    # a rater prefers tuned on 6 items, base on 2, ties 2 and skips 2
    plan = ["tuned"] * 6 + ["base"] * 2 + ["tie"] * 2 + [""] * 2
    for r, want in zip(rows, plan, strict=True):
        if want in ("tie", ""):
            r["preferred"] = want.upper() if want else ""
        else:
            r["preferred"] = "a" if items[r["item"]]["A"] == want else "B"
    _write(sheet, rows)
    results = import_dir(tmp_path / "he")
    assert results["scored"] == 10 and results["unscored"] == 2
    tuned, base = results["sides"]["tuned"], results["sides"]["base"]
    assert (tuned["wins"], tuned["ties"], tuned["losses"]) == (6, 2, 2)
    assert (base["wins"], base["ties"], base["losses"]) == (2, 2, 6)
    assert tuned["win_rate"] == pytest.approx(0.6) and base["loss_rate"] == pytest.approx(0.6)
    assert tuned["tie_rate"] == pytest.approx(0.2)
    assert json.loads((tmp_path / "he/results.json").read_text())["scored"] == 10

    # a scored sheet is never overwritten by a new export
    with pytest.raises(DataError, match="already has scores"):
        export_sheet(Side("base", preds, "base"), Side("tuned", preds, "tuned"), tmp_path / "he")


def test_a_wrong_cell_names_its_line(tmp_path: Path) -> None:
    preds = _predictions(tmp_path / "run", n=3)
    sheet, _ = export_sheet(Side("base", preds, "base"), Side("tuned", preds, "tuned"), tmp_path)
    rows = _read(sheet)
    rows[1]["preferred"] = "the second"
    _write(sheet, rows)
    with pytest.raises(DataError) as err:
        import_dir(tmp_path)
    assert f"{sheet}:3" in str(err.value) and "A, B or tie" in str(err.value)


def test_two_runs_compared_through_the_stages(tmp_path: Path) -> None:
    _predictions(tmp_path / "lora", n=5)
    _predictions(tmp_path / "full", n=5)
    cfg = compose_config(
        [
            "model=tiny",
            "stages=[human_eval_export]",
            f"evaluator.human_eval.vs={tmp_path / 'full'}",
            "evaluator.human_eval.labels=[lora,full]",
        ],
        run_dir=tmp_path / "lora",
    )
    run_pipeline(cfg)
    folder = tmp_path / "lora" / "human_eval"
    key = json.loads((folder / KEY).read_text())
    assert set(key["sides"]) == {"lora", "full"}
    rows = _read(folder / SHEET)
    for r in rows:
        r["preferred"] = "A" if key["items"][r["item"]]["A"] == "full" else "B"
    _write(folder / SHEET, rows)
    cfg = compose_config(["model=tiny", "stages=[human_eval_import]"], run_dir=tmp_path / "lora")
    metrics = run_pipeline(cfg)
    assert metrics["human_eval"]["sides"]["full"]["win_rate"] == 1.0
    assert metrics["human_eval"]["sides"]["lora"]["loss_rate"] == 1.0


def test_module_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _predictions(tmp_path / "run", n=4)
    assert main(["export", str(tmp_path / "run"), "--seed", "1"]) == 0
    assert (tmp_path / "run/human_eval" / SHEET).exists()
    assert main(["import", str(tmp_path / "nowhere")]) == 2
    assert "no key" in capsys.readouterr().err
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "framework.evaluate.human_eval",
            "import",
            str(tmp_path / "run/human_eval"),
        ],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "None of the 4 items is scored yet" in proc.stdout


def test_importing_an_unscored_sheet_says_so_and_writes_valid_json(tmp_path: Path) -> None:
    preds = _predictions(tmp_path / "run")
    sheet, _ = export_sheet(
        Side("base", preds, "base"), Side("tuned", preds, "tuned"), tmp_path / "he", seed=3
    )
    results = import_dir(sheet.parent)
    assert results["scored"] == 0 and results["unscored"] == 12
    saved = json.loads((sheet.parent / "results.json").read_text(encoding="utf-8"))
    assert saved["sides"]["tuned"]["win_rate"] is None  # strict JSON: null, never NaN
    summary = (sheet.parent / "results.md").read_text(encoding="utf-8")
    assert "None of the 12 items is scored yet" in summary and "nan" not in summary


# --------------------------------------------------------------------------- 1-5 ratings


def test_ratings_sheet_is_blinded_and_gives_mean_ratings_per_side(tmp_path: Path) -> None:
    from framework.evaluate.human_eval import CRITERIA, RATINGS

    preds = _predictions(tmp_path / "run", n=4)
    sheet, key = export_sheet(
        Side("base", preds, "base"), Side("tuned", preds, "tuned"), tmp_path / "he", seed=1
    )
    ratings = sheet.parent / RATINGS
    rows = _read(ratings)
    assert len(rows) == 8  # one row per answer: A and B of each of the 4 items
    assert list(rows[0]) == ["item", "answer", "prompt", "reference", "text", *CRITERIA, "comment"]
    text = ratings.read_text(encoding="utf-8-sig")
    assert "base" not in text and "tuned" not in text and "问题" in text
    items = json.loads(key.read_text())["items"]
    # tuned: correctness 4 and 5 on two answers, fluency 3 on one; base: correctness 2 on all
    tuned_correct = iter(["4", "5"])
    for r in rows:
        side = items[r["item"]][r["answer"]]
        assert r["text"].startswith("reply two" if side == "tuned" else "reply one")
        if side == "base":
            r["correctness"] = "2"
        elif r["item"] in ("0001", "0002"):
            r["correctness"] = next(tuned_correct)
            r["fluency"] = "3" if r["item"] == "0001" else ""
    _write(ratings, rows)
    results = import_dir(tmp_path / "he")
    got = results["ratings"]
    assert got["answers"] == 8 and got["rated"] == 6  # 4 base + 2 tuned answers rated
    assert got["sides"]["base"]["correctness"] == {"mean": 2.0, "count": 4}
    assert got["sides"]["tuned"]["correctness"] == {"mean": 4.5, "count": 2}
    assert got["sides"]["tuned"]["fluency"] == {"mean": 3.0, "count": 1}
    assert got["sides"]["tuned"]["diversity"] == {"mean": None, "count": 0}
    saved = json.loads((tmp_path / "he" / "results.json").read_text())
    assert saved["ratings"] == got
    md = (tmp_path / "he" / "results.md").read_text()
    assert "| tuned | 4.50 (n=2) | - | 3.00 (n=1) | - |" in md
    assert "6 of 8 answers rated" in md


def test_a_rating_outside_1_to_5_names_its_cell(tmp_path: Path) -> None:
    from framework.evaluate.human_eval import RATINGS, parse_rating

    assert parse_rating(" 5 ", "x") == 5 and parse_rating("", "x") is None
    assert parse_rating("3.0", "x") == 3
    preds = _predictions(tmp_path / "run", n=2)
    sheet, _ = export_sheet(
        Side("base", preds, "base"), Side("tuned", preds, "tuned"), tmp_path / "he"
    )
    rows = _read(sheet.parent / RATINGS)
    rows[1]["reasonableness"] = "6"
    _write(sheet.parent / RATINGS, rows)
    with pytest.raises(DataError) as err:
        import_dir(tmp_path / "he")
    text = err.value.format()
    assert "'6' is not a rating" in text and f"{RATINGS}:3 column reasonableness" in text
    # filled ratings are never overwritten by a new export
    with pytest.raises(DataError, match="already has ratings"):
        export_sheet(Side("base", preds, "base"), Side("tuned", preds, "tuned"), tmp_path / "he")

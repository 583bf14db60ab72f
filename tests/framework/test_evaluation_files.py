"""What the evaluate stage writes: the predictions file it continues from, and the report."""

from __future__ import annotations

import json
from pathlib import Path

from framework.evaluate.predictions import PredictionStore
from framework.evaluate.report import change_text, write_report
from framework.run import read_jsonl
from tests.conftest import compose_config


def test_store_survives_a_write_cut_short_and_forgets_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    store = PredictionStore(path, {"base": "fp-b", "tuned": "fp-t"})
    store.append("base", [{"id": "x", "base": "1"}, {"id": "y", "base": "2"}])
    store.append("tuned", [{"id": "x", "tuned": "one"}])
    with path.open("a", encoding="utf-8") as f:
        f.write('{"id": "y", "tun')  # the process was killed in the middle of a line

    again = PredictionStore(path, {"base": "fp-b", "tuned": "fp-t"})
    assert again.answer("base", "x") == "1" and again.answer("base", "y") == "2"
    assert again.answer("tuned", "x") == "one" and again.answer("tuned", "y") is None
    assert all(json.loads(line) for line in path.read_text().splitlines())  # repaired

    # the tuned model changed: its answers are not reused, the base ones are
    changed = PredictionStore(path, {"base": "fp-b", "tuned": "other"})
    assert changed.answer("tuned", "x") is None and changed.answer("base", "x") == "1"
    rows = changed.compact(["y", "x", "missing"])
    assert [r["id"] for r in rows] == ["y", "x"]
    assert read_jsonl(path) == rows


def _row(i: int, ref: str, base: str, tuned: str) -> dict:
    return {
        "id": f"id{i}",
        "source": f"data.jsonl:{i}",
        "messages": [{"role": "user", "content": f"question {i}"}],
        "reference": ref,
        "base": base,
        "tuned": tuned,
    }


def test_report_shows_the_table_and_the_examples_that_moved_most(tmp_path: Path) -> None:
    cfg = compose_config(["model=tiny", "evaluator.report_examples=1"], run_dir=tmp_path / "run")
    rows = [
        _row(1, "北京是中国的首都", "不知道", "北京是中国的首都"),  # improved a lot
        _row(2, "Paris", "Pari", "Paris"),  # improved a little
        _row(3, "London", "London", "Berlin ```code```"),  # got worse
        _row(4, "Rome", "Rome", "Rome"),  # unchanged
    ]
    results = {
        "base": {"perplexity": 9.0, "bleu": 10.0},
        "tuned": {"perplexity": 3.0, "bleu": 5.0},
        "directions": {"perplexity": "lower", "bleu": "higher"},
    }
    path = write_report(tmp_path / "eval_report.md", results, rows, cfg, {"examples": 4})
    text = path.read_text()
    assert "| perplexity | 9 | 3 | -6 (better) |" in text
    assert "| bleu | 10 | 5 | -5 (worse) |" in text
    assert "Higher is better for bleu; lower is better for perplexity." in text
    assert "2 improved, 1 got worse, 1 unchanged" in text
    improved, worse = text.split("## Examples that improved")[1].split("## Examples that got worse")
    assert "data.jsonl:1" in improved and "data.jsonl:2" not in improved  # only the top one
    assert "北京是中国的首都" in improved and "question 1" in improved
    assert "data.jsonl:3" in worse and "````" in worse  # fenced safely around ``` in an answer
    assert change_text(2.0, 2.0, "lower") == "0"

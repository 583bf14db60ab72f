"""A metric's direction comes from what its plugin declares, everywhere it is judged.

The example package's ``wer`` (word error rate, lower is better) comes from an installed
outside package: the evaluation table, ``eval_report.md``, ``metrics.json`` and sweep
rankings must all treat a drop as an improvement, and no name (``answer_f1`` holds "wer")
may decide a direction.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from framework import Metric, Score, hookimpl
from framework.evaluate.context import EvalContext
from framework.evaluate.report import change_text, directions_text, markdown_table, table_rows
from framework.evaluate.stage import results_payload, score
from framework.manager import build_plugin_manager
from framework.run import Run
from framework.sweep.records import DEFAULT_DIRECTION, JobRecord, choose_metric
from framework.sweep.report import summarize
from tests.conftest import TINY, compose_config, run_cli

# --------------------------------------------------------------------------- reports


def test_a_drop_is_better_for_a_lower_is_better_metric_and_worse_for_the_others() -> None:
    results = {
        "base": {"wer": 1.00, "exact_match": 0.50, "answer_length": 10.0},
        "tuned": {"wer": 1.04, "exact_match": 0.25, "answer_length": 12.0},
        "directions": {"wer": "lower", "exact_match": "higher", "answer_length": None},
    }
    rows = {r[0]: r for r in table_rows(results)}
    assert rows["wer"][3] == "+0.04 (worse)"  # wer went up: worse, whatever "+" suggests
    assert rows["exact_match"][3] == "-0.25 (worse)"
    assert rows["answer_length"][3] == "+2"  # no declared direction: no judgement
    assert "| wer | 1 | 1.04 | +0.04 (worse) |" in markdown_table(results)

    results["tuned"]["wer"] = 0.90
    assert table_rows(results)[0][3] == "-0.1 (better)"
    assert change_text(1.0, 0.9, "higher") == "-0.1 (worse)"
    assert change_text(1.0, 0.9, None) == "-0.1"
    assert change_text(1.0, 1.0, "lower") == "0"

    text = directions_text(results)
    assert "Higher is better for exact_match" in text and "lower is better for wer" in text
    assert "No direction is declared for answer_length" in text


# --------------------------------------------------------------------------- score()


def _module(monkeypatch: pytest.MonkeyPatch, name: str, **hooks) -> str:
    module = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(module, hook, hookimpl(fn))
    monkeypatch.setitem(sys.modules, name, module)
    return name


def _run_and_ctx(tmp_path: Path, metrics: str, extra: list[str]) -> tuple[Run, EvalContext]:
    cfg = compose_config(["model=tiny", f"evaluator.metrics={metrics}"], run_dir=tmp_path / "r")
    run = Run(cfg=cfg, dir=tmp_path / "r", plugins=build_plugin_manager(extra=extra))
    refs, preds = ["the cat sat", "a dog"], ["the cat sat down", "a dog"]
    examples = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": r}]}
        for r in refs
    ]
    ctx = EvalContext(model=None, tokenizer=None, examples=examples, cfg=cfg)
    ctx._generations = preds
    return run, ctx


def test_score_records_declared_directions_scores_and_stderr(
    on_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy = _module(
        monkeypatch,
        "legacy_length_metric",
        tunesmith_provides=lambda: {"metric": ["answer_length"]},
        tunesmith_compute_metrics=lambda metrics: (
            {"answer_length": 3.5} if "answer_length" in metrics else None
        ),
    )
    overriding = _module(
        monkeypatch,
        "overriding_metric",
        tunesmith_provides=lambda: [Metric("margin", higher_is_better=None)],
        tunesmith_compute_metrics=lambda metrics: (
            {"margin": Score(0.2, higher_is_better=True, stderr=0.01)}
            if "margin" in metrics
            else None
        ),
    )
    run, ctx = _run_and_ctx(
        tmp_path, "[exact_match,wer,rouge,answer_length,margin]", [legacy, overriding]
    )
    got = score(run, ctx)
    assert got.values["wer"] == pytest.approx(1 / 5)  # one inserted word over five
    assert got.directions == {
        "exact_match": "higher",
        "wer": "lower",  # declared by the installed package
        "rouge1": "higher",  # rouge's direction covers the keys it reports
        "rouge2": "higher",
        "rougeL": "higher",
        "answer_length": None,  # legacy declaration: no direction
        "margin": "higher",  # the Score overrides the declaration
    }
    assert got.stderr == {"margin": 0.01}

    payload = results_payload({"base": got, "tuned": got})
    assert payload["base"] == got.values  # plain numbers, as every reader expects
    assert payload["directions"]["wer"] == "lower"
    assert payload["stderr"] == {"base": {"margin": 0.01}, "tuned": {"margin": 0.01}}
    assert "| margin | 0.2 ± 0.01 | 0.2 ± 0.01 | 0 |" in markdown_table(payload)


def test_a_legacy_metric_without_direction_prints_no_better_or_worse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # declared the old way ({"metric": [...]}), with a name that sounds like a loss
    legacy = _module(
        monkeypatch,
        "legacy_loss_metric",
        tunesmith_provides=lambda: {"metric": ["answer_loss"]},
        tunesmith_compute_metrics=lambda metrics, ctx: (
            {"answer_loss": 3.0 if ctx.label == "base" else 2.0}
            if "answer_loss" in metrics
            else None
        ),
    )
    run, ctx = _run_and_ctx(tmp_path, "[answer_loss]", [legacy])
    base = score(run, EvalContext(None, None, ctx.examples, ctx.cfg, "base"))
    tuned = score(run, ctx)
    payload = results_payload({"base": base, "tuned": tuned})
    assert payload["directions"] == {"answer_loss": None}
    assert table_rows(payload) == [("answer_loss", "3", "2", "-1")]
    assert "better" not in markdown_table(payload) and "worse" not in markdown_table(payload)
    assert "No direction is declared for answer_loss" in directions_text(payload)
    # no recorded directions at all (an older metrics.json): no judgement either
    assert table_rows({"base": {"perplexity": 9.0}, "tuned": {"perplexity": 3.0}})[0][3] == "-6"


# --------------------------------------------------------------------------- sweep ranking


def _job(num: int, tuned: dict, directions: dict | None = None) -> JobRecord:
    metrics: dict = {"tuned": tuned}
    if directions is not None:
        metrics["directions"] = directions
    return JobRecord(num, f"d{num}", [f"seed={num}"], "finished", metrics)


def test_sweep_direction_is_recorded_never_guessed_from_the_name(tmp_path: Path) -> None:
    f1 = [_job(0, {"answer_f1": 0.2}, {"answer_f1": "higher"}), _job(1, {"answer_f1": 0.6})]
    assert choose_metric(None, f1, "tuned/answer_f1") == ("tuned/answer_f1", "maximize", "declared")
    # nothing recorded at all: the documented default, not a guess from "wer" in the name
    bare = [_job(0, {"answer_f1": 0.2}), _job(1, {"answer_f1": 0.6})]
    ranking = choose_metric(None, bare, "tuned/answer_f1")
    assert (
        ranking == ("tuned/answer_f1", DEFAULT_DIRECTION, "default")
        and DEFAULT_DIRECTION == "maximize"
    )
    summary = summarize(tmp_path, bare, ranking.metric, ranking.direction, False, ranking.source)
    assert [r.job.num for r in summary.rows] == [1, 0]
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "No direction is known for tuned/answer_f1" in md and "(maximize)" in md

    wer = [_job(0, {"wer": 0.9}, {"wer": "lower"}), _job(1, {"wer": 0.4}, {"wer": "lower"})]
    assert choose_metric(None, wer, "tuned/wer") == ("tuned/wer", "minimize", "declared")
    # an explicit direction still wins, and so does Optuna's for the metric it optimises
    assert choose_metric(None, wer, "tuned/wer", "maximize").direction == "maximize"
    from omegaconf import OmegaConf

    optuna = OmegaConf.create(
        {"optimized_metric": "tuned/wer", "hydra": {"sweeper": {"direction": "maximize"}}}
    )
    assert choose_metric(optuna, wer) == ("tuned/wer", "maximize", "optuna")


# --------------------------------------------------------------------------- real runs


def test_installed_lower_is_better_metric_in_table_report_and_metrics_json(
    installed: Path, tmp_path: Path, alpaca_file: Path
) -> None:
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "stages=[prepare,train,evaluate]",
        "evaluator.metrics=[exact_match,wer]",
        "evaluator.max_samples=4",
        env={"TUNESMITH_OUTPUT": str(tmp_path), "PYTHONPATH": str(installed)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["directions"] == {"exact_match": "higher", "wer": "lower"}
    for side in ("base", "tuned"):
        assert set(metrics[side]) == {"exact_match", "wer"}
        assert all(isinstance(v, float) for v in metrics[side].values())
    b, t = metrics["base"]["wer"], metrics["tuned"]["wer"]
    expected = change_text(b, t, "lower")
    assert ("(better)" in expected) == (t < b) and ("(worse)" in expected) == (t > b)

    report = (run / "eval_report.md").read_text()
    assert "lower is better for wer" in report and "Higher is better for exact_match" in report
    row = next(line for line in report.splitlines() if line.startswith("| wer |"))
    assert row.endswith(f"| {expected} |")
    assert "lower is better for wer" in proc.stdout  # under the printed table


def test_sweep_ranked_by_an_installed_lower_is_better_metric_minimises(
    installed: Path, tmp_path: Path, alpaca_file: Path
) -> None:
    proc = run_cli(
        "-m",
        *TINY,
        "trainer.max_steps=2",
        "data=alpaca",
        f"data.path={alpaca_file}",
        "stages=[prepare,train,evaluate]",
        "evaluator.metrics=[wer]",
        "evaluator.compare_base=false",
        "evaluator.max_samples=4",
        "optim.lr=1e-3,3e-3",
        env={"TUNESMITH_OUTPUT": str(tmp_path), "PYTHONPATH": str(installed)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = [p for p in (tmp_path / "multirun").iterdir() if p.is_dir()]
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/job.json")]
    assert len(jobs) == 2
    assert all(j["metrics"]["directions"] == {"wer": "lower"} for j in jobs)
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["metric"] == "tuned/wer"
    assert (summary["direction"], summary["direction_source"]) == ("minimize", "declared")
    values = [j["value"] for j in summary["jobs"]]
    assert values == sorted(values)  # lowest error rate first
    assert "ranked by tuned/wer (minimize)" in proc.stdout

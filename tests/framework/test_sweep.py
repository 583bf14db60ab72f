"""Sweep bookkeeping without running models: naming, metric choice, ranking, summary files."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework.sweep import jobs as sweep
from framework.sweep.jobs import name_for
from framework.sweep.records import JobRecord, choose_metric, collect_jobs, read_job
from framework.sweep.report import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _job(
    root: Path,
    num: int,
    overrides: list[str],
    status: str = "finished",
    ppl: float | None = None,
    error: str | None = None,
) -> JobRecord:
    job_dir = root / f"{num}__tiny-lora-demo"
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    metrics = {}
    if ppl is not None:  # as the evaluate stage records them: with the declared direction
        metrics = {
            "base": {"perplexity": 500.0},
            "tuned": {"perplexity": ppl},
            "directions": {"perplexity": "lower"},
        }
    record = JobRecord(
        num=num,
        dir=str(job_dir),
        overrides=overrides,
        status=status,
        metrics=metrics,
        error=error,
        error_type=None if error is None else "ValueError",
    )
    (job_dir / sweep.JOB_FILE).write_text(json.dumps(asdict(record)))
    return record


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "optim.lr=1e-3,3e-3,-1__method=lora,full"
    _job(root, 0, ["model=tiny", "optim.lr=1e-3", "method=lora"], ppl=300.0)
    _job(root, 1, ["model=tiny", "optim.lr=3e-3", "method=lora"], ppl=120.5)
    _job(
        root,
        2,
        ["model=tiny", "optim.lr=-1", "method=lora"],
        status="failed",
        error="ValueError: Invalid learning rate: -1.0\n(more lines)",
    )
    _job(root, 3, ["model=tiny", "optim.lr=1e-3", "method=full"], ppl=210.0)
    return root


def test_sweep_name_is_deterministic_path_safe_and_short() -> None:
    overrides = ["model=tiny", "data.path=/data/mine.jsonl", "optim.lr=1e-4,3e-4"]
    name = name_for(overrides)
    assert name == name_for(list(overrides))
    assert name == "model=tiny__data.path=-data-mine.jsonl__optim.lr=1e-4,3e-4"
    assert "/" not in name_for(["data.path=/a/b/c.jsonl"])
    long = name_for([f"k{i}=value_{i}" for i in range(40)])
    assert len(long) <= sweep.MAX_NAME and long != name_for([f"k{i}=value_{i}" for i in range(41)])
    assert name_for([]) == "sweep"
    assert name_for(["hydra.launcher.n_jobs=2"]) == "sweep"


def test_metric_choice_explicit_then_optimized_then_first_evaluator_metric() -> None:
    metrics = {
        "tuned": {"exact_match": 0.5, "perplexity": 3.0},
        "directions": {"exact_match": "higher", "perplexity": "lower"},
    }
    jobs = [JobRecord(0, "d", [], "finished", metrics)]
    cfg = OmegaConf.create({"evaluator": {"metrics": ["perplexity", "exact_match"]}})
    # the direction each job recorded (declared by the metric's plugin)
    assert choose_metric(cfg, jobs) == ("tuned/perplexity", "minimize", "declared")
    assert choose_metric(cfg, jobs, metric="tuned/exact_match") == (
        "tuned/exact_match",
        "maximize",
        "declared",
    )
    assert choose_metric(cfg, jobs, "tuned/exact_match", "minimize") == (
        "tuned/exact_match",
        "minimize",
        "given",
    )
    optuna = OmegaConf.create(
        {
            "optimized_metric": "tuned/exact_match",
            "evaluator": {"metrics": ["perplexity"]},
            "hydra": {"sweeper": {"direction": "minimize"}},
        }
    )
    # Optuna's direction wins for the metric it optimises, whatever the metric declares
    assert choose_metric(optuna, jobs) == ("tuned/exact_match", "minimize", "optuna")
    assert choose_metric(None, [JobRecord(0, "d", [], "failed")]) == (None, "maximize", "default")


def test_metric_without_recorded_direction_is_maximised_by_default_and_says_so(
    sweep_dir: Path,
) -> None:
    # jobs from before directions were recorded: no guess from "perplexity" in the name
    for path in sweep_dir.glob("*/job.json"):
        data = json.loads(path.read_text())
        data["metrics"].pop("directions", None)
        path.write_text(json.dumps(data))
    jobs = collect_jobs(sweep_dir)
    ranking = choose_metric(None, jobs, "tuned/perplexity")
    assert ranking == ("tuned/perplexity", "maximize", "default")
    summary = summarize(sweep_dir, jobs, *ranking[:2], plot=False, direction_source=ranking.source)
    assert [r.job.num for r in summary.rows] == [0, 3, 1, 2]
    md = (sweep_dir / "sweep_summary.md").read_text()
    assert "No direction is known for tuned/perplexity" in md
    assert "hydra.callbacks.sweep.direction=minimize|maximize" in md
    data = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert data["direction_source"] == "default"


def test_summary_ranks_jobs_marks_the_best_and_lists_failures_last(sweep_dir: Path) -> None:
    jobs = collect_jobs(sweep_dir)
    summary = summarize(sweep_dir, jobs, "tuned/perplexity", "minimize")
    assert [r.job.num for r in summary.rows] == [1, 3, 0, 2]
    assert summary.best is not None and summary.best.job.num == 1
    assert summary.swept == ["optim.lr", "method"]
    assert summary.fixed == ["model=tiny"]

    with (sweep_dir / "sweep_summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["1", "3", "0", "2"]
    assert [r["best"] for r in rows] == ["True", "False", "False", "False"]
    assert rows[0]["optim.lr"] == "3e-3" and rows[1]["method"] == "full"
    assert float(rows[0]["tuned/perplexity"]) == 120.5
    assert rows[3]["status"] == "failed" and "Invalid learning rate" in rows[3]["error"]
    assert rows[0]["overrides"] == "model=tiny optim.lr=3e-3 method=lora"

    md = (sweep_dir / "sweep_summary.md").read_text()
    assert "Ranked by **tuned/perplexity** (minimize)" in md
    assert "| 1 | ★ | 1 | finished | 3e-3 | lora | 120.5 |" in md
    assert "ValueError: Invalid learning rate: -1.0 |" in md  # first line of the error only
    assert "(more lines)" not in md
    assert "![tuned/perplexity against each swept value](sweep_summary.png)" in md
    assert (sweep_dir / "sweep_summary.png").read_bytes()[:8] == PNG_MAGIC

    data = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert data["best"]["job"] == 1 and data["counts"] == {"finished": 3, "failed": 1}


def test_maximised_metric_ranks_high_first(sweep_dir: Path) -> None:
    summary = summarize(sweep_dir, collect_jobs(sweep_dir), "tuned/perplexity", "maximize")
    assert [r.job.num for r in summary.rows] == [0, 3, 1, 2]


def test_job_without_record_is_read_from_what_it_left(tmp_path: Path) -> None:
    done = tmp_path / "0__x"
    (done / ".hydra").mkdir(parents=True)
    (done / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (done / "run_state.json").write_text('{"status": "finished", "stages_done": ["prepare"]}')
    (done / "metrics.json").write_text(
        '{"tuned": {"perplexity": 2.5}, "directions": {"perplexity": "lower"}}'
    )
    killed = tmp_path / "1__x"
    (killed / ".hydra").mkdir(parents=True)
    (killed / ".hydra" / "overrides.yaml").write_text("- seed=2\n")
    (tmp_path / "not_a_job").mkdir()

    jobs = collect_jobs(tmp_path)
    assert [(j.num, j.status) for j in jobs] == [(0, "finished"), (1, "incomplete")]
    assert jobs[0].metrics["tuned"]["perplexity"] == 2.5 and jobs[0].overrides == ["seed=1"]
    assert choose_metric(None, jobs).direction == "minimize"  # recorded in metrics.json
    assert read_job(tmp_path / "not_a_job") is None


def test_collect_jobs_leaves_out_jobs_that_did_not_run_again(sweep_dir: Path) -> None:
    import os

    before = sweep.snapshot(sweep_dir)
    for num in (1, 3):  # these ran again (Hydra rewrote their overrides.yaml)
        marker = next(sweep_dir.glob(f"{num}__*")) / ".hydra" / "overrides.yaml"
        later = before[marker.parent.parent.name] + 5_000_000_000
        os.utime(marker, ns=(later, later))
    assert [j.num for j in collect_jobs(sweep_dir, before=before)] == [1, 3]
    assert [j.num for j in collect_jobs(sweep_dir)] == [0, 1, 2, 3]


def test_resummarise_command_and_exit_status(sweep_dir: Path, capsys, monkeypatch) -> None:
    assert sweep.main([str(sweep_dir), "--metric", "tuned/perplexity", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "ranked by tuned/perplexity (minimize)" in out and "best: job 1" in out
    assert sweep.main([str(sweep_dir.parent / "missing")]) == 2

    from framework.sweep.report import summarize as _summarize

    monkeypatch.setattr(
        sweep,
        "last_summary",
        _summarize(sweep_dir, collect_jobs(sweep_dir), "tuned/perplexity", "minimize", False),
    )
    assert sweep.exit_status() == 1
    assert "1 of 4 jobs did not finish (jobs 2)" in capsys.readouterr().err
    monkeypatch.setattr(sweep, "last_summary", None)
    assert sweep.exit_status() == 0

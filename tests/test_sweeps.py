"""Real sweeps on the tiny model, as a user runs them: -m grids, Optuna, launchers, presets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from framework.cli import CONFIG_DIR
from tests.conftest import TINY, run_cli

#: Train, then score perplexity only (no generation, no base model): the quickest metric.
QUICK_EVAL = (
    "stages=[prepare,train,evaluate]",
    "evaluator.metrics=[perplexity]",
    "evaluator.compare_base=false",
)


def _sweep_dir(out: Path) -> Path:
    dirs = [p for p in (out / "multirun").iterdir() if p.is_dir()]
    assert len(dirs) == 1, f"every job of a sweep goes under one directory: {dirs}"
    return dirs[0]


def _jobs(sweep_dir: Path) -> dict[int, dict]:
    records = [json.loads(p.read_text()) for p in sweep_dir.glob("*/job.json")]
    return {r["num"]: r for r in records}


def test_grid_sweep_records_a_failed_job_goes_on_and_summarises(
    tmp_path: Path, alpaca_file: Path
) -> None:
    proc = run_cli(
        "-m",
        "experiment=smoke",  # the preset runs for real here: tiny model, a few steps
        *QUICK_EVAL,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "optim.lr=1e-3,-1,3e-3",  # the second job is invalid: torch rejects a negative lr
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
    )
    # the sweep ran every job, then says (with its exit status) that one did not finish
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 3 jobs did not finish (jobs 1)" in proc.stderr
    sweep_dir = _sweep_dir(tmp_path)

    jobs = _jobs(sweep_dir)
    assert sorted(jobs) == [0, 1, 2]
    assert jobs[1]["status"] == "failed"
    assert jobs[1]["error"] == "ValueError: Invalid learning rate: -1.0"
    assert "Traceback" in jobs[1]["traceback"]
    for num in (0, 2):
        assert jobs[num]["status"] == "finished"
        assert jobs[num]["metrics"]["tuned"]["perplexity"] > 1
        job_dir = Path(jobs[num]["dir"])
        # each job in its own directory with its resolved config and its overrides
        assert job_dir.parent == sweep_dir
        assert (job_dir / "config.yaml").exists() and (job_dir / "artifact").is_dir()
        lr = [1e-3, None, 3e-3][num]
        overrides = yaml.safe_load((job_dir / ".hydra/overrides.yaml").read_text())
        assert [float(o.split("=")[1]) for o in overrides if o.startswith("optim.lr=")] == [lr]
        assert yaml.safe_load((job_dir / "config.yaml").read_text())["optim"]["lr"] == lr

    # the summary: sorted by the metric (lowest perplexity first), best marked, failure last
    ppl = {n: jobs[n]["metrics"]["tuned"]["perplexity"] for n in (0, 2)}
    best = min(ppl, key=ppl.get)
    with (sweep_dir / "sweep_summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["job"]) for r in rows] == [best, 2 - best, 1]
    assert [r["best"] for r in rows] == ["True", "False", "False"]
    assert [float(r["optim.lr"]) for r in rows] == [
        [1e-3, None, 3e-3][n] or -1 for n in (best, 2 - best, 1)
    ]
    assert float(rows[0]["tuned/perplexity"]) == pytest.approx(ppl[best])
    assert rows[2]["status"] == "failed" and "Invalid learning rate" in rows[2]["error"]
    md = (sweep_dir / "sweep_summary.md").read_text()
    assert "Ranked by **tuned/perplexity** (minimize)" in md and "★" in md
    assert (sweep_dir / "sweep_summary.png").read_bytes()[:4] == b"\x89PNG"
    # ... and printed
    assert "sweep summary: 3 jobs (1 failed, 2 finished)" in proc.stdout
    assert f"best: job {best} (optim.lr=" in proc.stdout


def test_a_tunesmith_error_in_a_job_is_recorded_as_its_message(
    tmp_path: Path, alpaca_file: Path
) -> None:
    missing = tmp_path / "missing.jsonl"
    proc = run_cli(
        "-m",
        "model=tiny",
        "stages=[prepare]",
        "data=alpaca",
        f"data.path={missing},{alpaca_file}",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out")},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    jobs = _jobs(_sweep_dir(tmp_path / "out"))
    assert jobs[0]["status"] == "failed" and jobs[0]["error_type"] == "DataError"
    assert jobs[0]["error"].startswith(f"No data file matches '{missing}'.")
    assert "what to do:" in jobs[0]["error"] and jobs[0]["traceback"] is None
    assert jobs[1]["status"] == "finished"
    assert "Traceback" not in proc.stderr


def test_optuna_search_runs_trials_and_optimises_the_returned_metric(
    tmp_path: Path, alpaca_file: Path
) -> None:
    proc = run_cli(
        "hparams_search=lora_optuna",  # sets MULTIRUN itself: no -m
        # TINY fixes optim.lr; given on the command line it would replace the search space
        *[o for o in TINY if not o.startswith("optim.lr=")],
        *QUICK_EVAL,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "hydra.sweeper.n_trials=2",
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = _sweep_dir(tmp_path)
    jobs = _jobs(sweep_dir)
    assert sorted(jobs) == [0, 1]
    values = {}
    for num, job in jobs.items():
        assert job["status"] == "finished"
        params = dict(o.split("=", 1) for o in job["overrides"])
        assert 1e-4 <= float(params["optim.lr"]) <= 1e-2
        assert params["method.r"] in {"4", "8", "16"}
        values[num] = job["metrics"]["tuned"]["perplexity"]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(values.values()))
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["metric"] == "tuned/perplexity" and summary["direction"] == "minimize"
    assert summary["best"]["job"] == min(values, key=values.get)
    # the continuous lr always differs; the categorical ones may happen to agree
    assert "optim.lr" in summary["swept"]
    assert set(summary["swept"]) <= {"optim.lr", "method.r", "method.lora_alpha"}


def _hydra_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_slurm_launcher_config_composes_with_sensible_defaults() -> None:
    from hydra.utils import instantiate

    cfg = _hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.tasks_per_node == 1 and launcher.timeout_min > 0
    assert launcher.submitit_folder.startswith(cfg.hydra.sweep.dir)
    # Hydra loads plugin modules itself, so compare by name rather than by class object
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"


def test_parallel_launcher_and_optuna_configs_compose() -> None:
    cfg = _hydra_cfg("hydra/launcher=parallel", "hydra.launcher.n_jobs=3")
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 3
    for name, metric in (("lora_optuna", "tuned/perplexity"), ("lr_optuna", "tuned/exact_match")):
        cfg = _hydra_cfg(f"hparams_search={name}")
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        assert cfg.optimized_metric == metric
        assert cfg.hydra.sweeper.params


@pytest.mark.parametrize("name", ["smoke_sweep", "demo_lora_grid"])
def test_sweep_experiments_are_multiruns_with_a_grid(name: str) -> None:
    cfg = _hydra_cfg(f"experiment={name}")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params and cfg.hydra.callbacks.sweep.metric == "tuned/perplexity"


def test_sweep_callback_is_registered_by_default() -> None:
    cfg = _hydra_cfg()
    assert cfg.hydra.callbacks.sweep._target_ == "framework.sweep.jobs.SweepCallback"

"""Experiment trackers get the whole run: the resolved config, the curves and the final
base/tuned metrics, read back with each library's own reader."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml

from framework.pipeline import run_pipeline
from tests.conftest import TINY, compose_config, run_cli, write_sums

#: Train a little, then score two cheap metrics (perplexity: no generation).
QUICK = ("trainer.max_steps=2", "evaluator.metrics=[perplexity,token_accuracy]")


def _needs(*packages: str) -> None:
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"needs `pip install {package}`")


def _mlflow_runs(out: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores so

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    return client.search_runs([found.experiment_id])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained in one command and evaluated in another, with three loggers."""
    _needs("mlflow", "tensorboard")
    root = tmp_path_factory.mktemp("tracked")
    data = write_sums(root / "sums.jsonl")
    common = [*TINY, *QUICK, "data=alpaca", f"data.path={data}", "logger=[tensorboard,mlflow]"]
    run_dir = root / "out" / "run"
    run_pipeline(compose_config([*common, "stages=[prepare,train]"], run_dir=run_dir))
    run_pipeline(compose_config([*common, "stages=[evaluate]"], run_dir=run_dir))
    return run_dir


def test_mlflow_run_has_the_config_the_curves_and_the_final_metrics(tracked: Path) -> None:
    runs = _mlflow_runs(tracked.parent, "tunesmith")  # one store per output root
    assert len(runs) == 1, "the evaluate command continued the training command's run"
    run = runs[0]
    assert (tracked.parent / "mlruns").is_dir() and not (tracked / "mlruns").exists()
    params = run.data.params
    assert params["model/name"] == "tiny" and params["method/name"] == "lora"
    assert float(params["trainer/max_steps"]) == 2 and "optim/lr" in params
    metrics = run.data.metrics
    assert {"train/loss", "base/perplexity", "tuned/perplexity", "tuned/token_accuracy"} <= set(
        metrics
    )
    saved = json.loads((tracked / "metrics.json").read_text())
    assert metrics["tuned/perplexity"] == pytest.approx(saved["tuned"]["perplexity"])
    assert run.info.run_name == tracked.name and run.info.status == "FINISHED"


def test_tensorboard_has_hparams_with_the_final_metrics(tracked: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tracked / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "tuned/perplexity", "base/perplexity"} <= scalars
    content = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content and "_hparams_/experiment" in content
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["model/name"].string_value == "tiny"
    assert "optim/lr" in start.hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert "tuned/perplexity" in {m.name.tag for m in experiment.metric_infos}


def test_csv_logger_keeps_the_curves_and_adds_config_and_final_metrics(tracked: Path) -> None:
    hparams = yaml.safe_load((tracked / "logs" / "hparams.yaml").read_text())
    assert hparams["model"]["name"] == "tiny" and hparams["trainer"]["max_steps"] == 2
    with (tracked / "logs" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss") for r in rows), "the evaluate command kept the curves"
    final = [r for r in rows if r.get("tuned/perplexity")]
    assert len(final) == 1 and final[0].get("base/perplexity")
    assert (tracked / "loss_curve.png").exists()


def test_tracker_runs_are_recorded_for_later_commands(tracked: Path) -> None:
    saved = json.loads((tracked / "trackers.json").read_text())
    assert set(saved) == {"csv", "tensorboard", "mlflow"}
    assert saved["mlflow"]["version"] == _mlflow_runs(tracked.parent, "tunesmith")[0].info.run_id


@pytest.mark.slow
def test_sweep_jobs_share_one_mlflow_experiment_named_after_the_sweep(tmp_path: Path) -> None:
    _needs("mlflow")
    data = write_sums(tmp_path / "sums.jsonl")
    proc = run_cli(
        "-m",
        *TINY,
        *QUICK,
        "stages=[prepare,train,evaluate]",
        "evaluator.compare_base=false",
        "data=alpaca",
        f"data.path={data}",
        "logger=mlflow",
        "optim.lr=1e-3,2e-3",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "out" / "multirun").iterdir()
    runs = _mlflow_runs(tmp_path / "out", sweep_dir.name)
    assert len(runs) == 2
    assert sorted(r.data.params["optim/lr"] for r in runs) == ["0.001", "0.002"]
    assert all("tuned/perplexity" in r.data.metrics for r in runs)
    job_dirs = {p.name for p in sweep_dir.iterdir() if p.is_dir()}
    assert {r.info.run_name for r in runs} == job_dirs


@pytest.mark.slow
def test_wandb_offline_run_gets_the_config_and_final_metrics(tmp_path: Path) -> None:
    """W&B's offline directory holds only its binary log (no Python reader ships with wandb
    0.2x+), so the run is read back through wandb's own run object in this process."""
    _needs("wandb")
    from framework.train.loggers import TRACKERS_FILE, log_results, start_training_loggers
    from tests.helpers import new_run

    run = new_run(compose_config(["model=tiny", "logger=wandb"], run_dir=tmp_path / "run"))
    run.dir.mkdir(parents=True)
    (trainer_side,) = [
        lg for lg in start_training_loggers(run, resume=False) if "Wandb" in type(lg).__name__
    ]
    run_id = trainer_side.experiment.id
    saved = json.loads((run.dir / TRACKERS_FILE).read_text())
    assert saved["wandb"]["version"] == run_id  # a later command reopens this run
    (later,) = [
        lg
        for lg in log_results(run, {"tuned": {"exact_match": 0.75}})
        if "Wandb" in type(lg).__name__
    ]
    experiment = later.experiment
    assert experiment.id == run_id
    assert experiment.config["model"]["name"] == "tiny"
    assert experiment.summary["tuned/exact_match"] == 0.75
    experiment.finish()
    assert list((run.dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))

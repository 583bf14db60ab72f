"""Output roots for the board tests: a real tiny run, a sweep, and half-written runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from framework.manager import build_plugin_manager
from framework.resolvers import ROOT_DIR
from plugins.board.app import BoardSettings, create_app
from tests.framework.tiny_run import finished_run

REAL = "runs/tiny-real"


def make_output_root(factory: pytest.TempPathFactory, root: Path) -> Path:
    """``root/outputs`` with: the shared finished tiny run (copied), a two-job sweep made of
    copies of it, and fabricated half-written runs."""
    out = root / "outputs"
    real = finished_run(factory)
    ignore = shutil.ignore_patterns("checkpoints", "export", ".lock")
    shutil.copytree(real, out / REAL, ignore=ignore)
    # a sweep: two jobs, the second one best
    sweep = out / "multirun" / "sweep-r"
    for num, r in ((0, 4), (1, 8)):
        job = sweep / f"{num}__tiny-lora-alpaca__method.r={r}"
        shutil.copytree(real, job, ignore=ignore)
        (job / "metrics.json").write_text(
            json.dumps({"tuned": {"perplexity": 100.0 - r, "exact_match": r / 10}})
        )
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "sweep_summary.json").write_text(
        json.dumps(
            {
                "metric": "tuned/perplexity",
                "direction": "minimize",
                "swept": ["method.r"],
                "best": {"job": 1, "dir": str(sweep / "1__tiny-lora-alpaca__method.r=8")},
                "jobs": [
                    {
                        "rank": 1,
                        "value": 92.0,
                        "dir": str(sweep / "1__tiny-lora-alpaca__method.r=8"),
                    },
                    {
                        "rank": 2,
                        "value": 96.0,
                        "dir": str(sweep / "0__tiny-lora-alpaca__method.r=4"),
                    },
                ],
            }
        )
    )
    (sweep / "sweep_summary.md").write_text("| rank | job |\n|---|---|\n| 1 | 1 |\n")
    half_written(out / "runs")
    return out


def half_written(runs: Path) -> None:
    """Runs as a killed save or a run in progress leaves them."""
    # running: its lock names this (live) process; files cut short everywhere
    live = runs / "in-progress"
    (live / "logs").mkdir(parents=True)
    (live / "run_state.json").write_text('{"status": "running", "stages_done": ["prepare"]}')
    (live / ".lock").write_text(str(os.getpid()))
    (live / "config.yaml").write_text(
        "run_name: in-progress\nstages: [prepare, train]\nmodel: {name: tiny}\n"
        "method: {name: lora}\ndata: {name: demo}\n"
    )
    (live / "logs" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,5.0,\n0,1,4.5,\n0,2,4.1,4.3\n0,3,3.9"
    )
    (live / "metrics.json").write_text('{"tuned": {"perplex')
    (live / "predictions.jsonl").write_text(
        '{"id": "a", "messages": [{"role": "user", "content": "1+1"}], "reference": "2", '
        '"base": "3"}\n{"id": "a", "tuned": "2"}\n{"id": "b", "messages": [{"role": "us'
    )
    (live / "data").mkdir()
    (live / "data" / "report.json").write_text('{"sources": [')
    (live / "data" / "rejects.jsonl").write_text(
        '{"source": "mine.jsonl:3", "reason": "missing_field", "message": "no output"}\n{"sou'
    )
    # killed: marked running, but its process is gone
    killed = runs / "killed"
    killed.mkdir()
    (killed / "run_state.json").write_text('{"status": "running", "stages_done": []}')
    (killed / ".lock").write_text("999999999")
    (killed / "config.yaml").write_text("run_name: killed\nstages: [prepare, train]\n")
    # broken: state cut short, config not YAML
    broken = runs / "broken"
    broken.mkdir()
    (broken / "run_state.json").write_text('{"status": "fin')
    (broken / "config.yaml").write_text("stages: [prepare\n  : : :\n")
    # failed
    failed = runs / "failed"
    failed.mkdir()
    (failed / "run_state.json").write_text(
        '{"status": "failed", "stages_done": ["prepare"], "error": "DataError: bad file"}'
    )
    # a session stage's directory (stages=[board]) is not a run
    session = runs / "board-only"
    session.mkdir()
    (session / "config.yaml").write_text("run_name: board-only\nstages: [board]\n")


def client_for(out: Path, data_dir: Path, **settings) -> TestClient:
    """A test client of a board on ``out`` (loopback Host header, as a browser sends)."""
    board_settings = BoardSettings(
        output_root=out, data_dir=data_dir, project_root=ROOT_DIR, **settings
    )
    app = create_app(board_settings, build_plugin_manager())
    return TestClient(app, base_url="http://127.0.0.1:7860")

"""A finished tiny LoRA run (prepare, train, evaluate, export adapter + merged), built once.

Shared by the export, serve and chat tests: ``finished_run(tmp_path_factory)`` trains on the
first call of the session and returns the same directory afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.manager import build_plugin_manager
from framework.pipeline import run_pipeline
from framework.run import Run
from tests.conftest import TINY, compose_config, write_sums

_CACHE: dict[str, Path] = {}

#: The overrides the shared run was trained with.
RUN_OVERRIDES = (
    *TINY,
    "data=alpaca",
    "method.r=8",
    "export.formats=[adapter,merged]",
)


def finished_run(factory: pytest.TempPathFactory) -> Path:
    """The directory of the shared finished run (trained on first use)."""
    if "run" not in _CACHE:
        root = factory.mktemp("tiny-run")
        data = write_sums(root / "sums.jsonl")
        cfg = compose_config([*RUN_OVERRIDES, f"data.path={data}"], run_dir=root / "run")
        run_pipeline(cfg)
        _CACHE["run"] = root / "run"
    return _CACHE["run"]


def run_of(run_dir: Path, *overrides: str) -> Run:
    """A :class:`Run` on ``run_dir`` with the run's own config plus ``overrides``."""
    data = json.loads((run_dir / "data" / "report.json").read_text())["sources"][0]["files"][0]
    cfg = compose_config([*RUN_OVERRIDES, f"data.path={data}", *overrides], run_dir=run_dir)
    return Run(cfg=cfg, dir=run_dir, plugins=build_plugin_manager())

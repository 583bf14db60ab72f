"""The Hydra application behind run.py: compose, run the stages, report errors plainly."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from framework.errors import TunesmithError
from framework.resolvers import ROOT_DIR, register_resolvers

log = logging.getLogger("tunesmith")

CONFIG_DIR = str(ROOT_DIR / "conf")


def debug_enabled() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("TUNESMITH_DEBUG") == "1"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the stages of ``cfg`` and return the run's metrics (for sweeps and tests)."""
    from framework.pipeline import run_pipeline

    return run_pipeline(cfg)


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value an Optuna sweep optimises: ``cfg.optimized_metric`` looked up in metrics."""
    key = cfg.get("optimized_metric")
    if not key:
        return None
    node: Any = metrics
    for part in str(key).split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else float(node)


def in_multirun() -> bool:
    """Whether this job is one of a multirun (``-m``, or ``hydra.mode=MULTIRUN``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from framework import sweep

    multirun = in_multirun()
    try:
        metrics = train(cfg)
    except Exception as err:
        if multirun and not debug_enabled():
            sweep.job_failed(err)  # recorded in job.json by the sweep callback; the sweep goes on
            return None
        if not isinstance(err, TunesmithError) or debug_enabled():
            raise
        log.error("%s", err.format())
        print(f"\nerror: {err.format()}", file=sys.stderr)
        sys.exit(2)
    if multirun:
        sweep.job_finished(metrics)
    return optimized_value(cfg, metrics)


def main() -> None:
    """Console entry point (``python run.py``; ``python run.py plugins`` lists the plugins)."""
    if sys.argv[1:2] == ["plugins"]:
        from framework.plugins_cli import main as plugins_main

        sys.exit(plugins_main(sys.argv[2:]))
    register_resolvers()
    hydra_main()
    from framework.sweep import exit_status

    sys.exit(exit_status())

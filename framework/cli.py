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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except TunesmithError as err:
        if debug_enabled():
            raise
        log.error("%s", err.format())
        print(f"\nerror: {err.format()}", file=sys.stderr)
        sys.exit(2)
    return optimized_value(cfg, metrics)


def main() -> None:
    """Console entry point (``python run.py``)."""
    register_resolvers()
    hydra_main()

"""The pipeline: build the plugin manager, then run each stage of ``cfg.stages`` in order."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.distributed import EVERY_RANK_STAGES, is_global_zero
from framework.errors import ConfigError
from framework.manager import build_plugin_manager
from framework.run import Run

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (through Lightning) for a reproducible run."""
    random.seed(seed)
    from lightning.pytorch import seed_everything as _seed

    _seed(seed, workers=True, verbose=False)


def run_pipeline(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the stages named in ``cfg.stages`` and return the run's metrics.

    Args:
        cfg: the composed run config.
        run_dir: where the run writes; defaults to ``cfg.paths.run_dir`` (Hydra's output
            directory for the job).

    Returns:
        The metrics the stages reported (``{"base": {...}, "tuned": {...}}`` after evaluate).
    """
    run_dir = Path(run_dir if run_dir is not None else cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plugins = build_plugin_manager(extra=list(cfg.get("plugins") or []))
    stages = [str(s) for s in cfg.stages]
    if not stages:
        raise ConfigError("No stage to run.", where="stages", hint="e.g. stages=[prepare,train]")
    for stage in stages:
        plugins.require("stage", stage)

    # Session stages (chat, serve) use a run without changing it: they are not recorded in
    # run_state.json, run again every time, and leave the run's config.yaml as it was.
    sessions = set(plugins.names("session"))
    run = Run(cfg=cfg, dir=run_dir, plugins=plugins)
    if not is_global_zero():
        return run_as_worker(run, stages)
    config_path = run_dir / "config.yaml"
    if any(s not in sessions for s in stages) or not config_path.exists():
        config_path.write_text(run.resolved_config(), encoding="utf-8")
    seed_everything(int(cfg.seed))
    state = run.state()
    if state["status"] == "finished" and not cfg.get("force", False):
        done = [s for s in stages if s in state["stages_done"]]
        if done == stages:
            log.warning(
                "This run is already finished: %s\n  Nothing was overwritten. To start a new run, "
                "pick another directory (hydra.run.dir=... or change an override); to redo "
                "its stages in place, add force=true.",
                run_dir,
            )
            return run.saved_metrics()
        if done:
            log.info("already done in this run, skipped: %s", ", ".join(done))
        stages = [s for s in stages if s not in done]
    recorded = [s for s in stages if s not in sessions]
    if recorded:
        run.mark(status="running")
    for stage in stages:
        log.info("stage: %s", stage)
        plugins.hook.tunesmith_run_stage(name=stage, run=run)
        if stage in sessions:
            continue
        run.mark(stage=stage)
        if stage == recorded[-1]:
            run.mark(status="finished")
            plugins.hook.tunesmith_run_end(run=run, metrics=run.metrics)
    return run.metrics


def run_as_worker(run: Run, stages: list[str]) -> dict[str, Any]:
    """A process of rank > 0 under a multi-process strategy: join the training stages only.

    Rank 0 prepared the data before it started this process, and saves, evaluates and
    exports after training; this process writes nothing to the run's state.
    """
    seed_everything(int(run.cfg.seed))
    for stage in stages:
        if stage in EVERY_RANK_STAGES:
            run.plugins.hook.tunesmith_run_stage(name=stage, run=run)
    return run.metrics


def to_container(cfg: DictConfig | dict | None) -> dict:
    """A plain resolved dict of a config node (for passing to library constructors)."""
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)

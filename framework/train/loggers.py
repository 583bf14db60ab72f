"""The ``logger`` group: experiment trackers that see the whole run, not only its curves.

Every logger in ``cfg.logger`` (CSV, TensorBoard, MLflow, W&B, or any Lightning logger a
user names with ``_target_``) gets:

* the resolved config as hyperparameters, when training starts (:func:`open_loggers`);
* the curves, from Lightning, while training;
* the final ``base/<metric>`` and ``tuned/<metric>`` values after the evaluate stage
  (:func:`log_results`); a TensorBoard-like logger whose ``log_hyperparams`` takes
  ``metrics`` gets them there, which fills TensorBoard's HPARAMS tab.

Train and evaluate may run in separate commands (or a run may resume after a kill): the
version each logger had (``logger.version``: the MLflow run id, the W&B run id) is kept in
``trackers.json`` in the run directory, and a later command reopens the same tracker run by
passing it back as ``version=`` to a logger that takes one. Starting a run over
(``force=true``, or no checkpoint to resume from) opens new tracker runs.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from framework.errors import ConfigError
from framework.run import Run, write_json

log = logging.getLogger(__name__)

#: Where the run directory keeps each logger's version (tracker run id), by its config key.
TRACKERS_FILE = "trackers.json"
#: The MLflow experiment of runs that are not part of a sweep.
DEFAULT_EXPERIMENT = "tunesmith"
#: The sides of an evaluation whose metrics go to the trackers (as ``<side>/<metric>``).
SIDES = ("base", "tuned")


# --------------------------------------------------------------------------- library help


def csv_logger(append: bool = False, **kwargs: Any) -> Any:
    """A ``lightning.pytorch.loggers.CSVLogger``; with ``append`` it keeps ``metrics.csv``.

    Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts writing: right
    for a run that starts over (a resumed one gets its rows back from the checkpoint, see
    :mod:`framework.train.resilience`), wrong for a later command that only adds the final
    metrics (:func:`log_results` reopens it with ``append=True``).

    Args:
        append: keep the rows already in ``metrics.csv`` and add to them.
        kwargs: ``CSVLogger`` arguments (``save_dir``, ``name``, ``version``...).
    """
    from lightning.pytorch.loggers import CSVLogger as Lightning

    logger = Lightning(**kwargs)
    if append:
        logger._experiment = _appending_writer(logger.log_dir)
    return logger


def _appending_writer(log_dir: str) -> Any:
    """A CSV experiment writer that keeps the existing file and knows its columns."""
    import csv

    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv
            try:
                with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
                    self.metrics_keys = list(csv.DictReader(f).fieldnames or [])
            except OSError:
                self.metrics_keys = []

    return AppendingWriter(log_dir=log_dir)


def mlflow_logger(
    experiment_name: str | None = None,
    run_name: str | None = None,
    version: str | None = None,
    run_dir: str | None = None,
    **kwargs: Any,
) -> Any:
    """A ``lightning.pytorch.loggers.MLFlowLogger`` for tunesmith's runs and sweeps.

    * A relative ``file:`` store is made absolute, and MLflow 3's refusal of file stores is
      lifted (``MLFLOW_ALLOW_FILE_STORE=true``, unless the environment says otherwise): one
      store per output root needs no server and no database.
    * ``experiment_name=None``: the jobs of a sweep go to an experiment named after the
      sweep (its directory), single runs to :data:`DEFAULT_EXPERIMENT`; the experiment is
      created here, so parallel jobs of one sweep do not race to create it.
    * ``run_name=None``: the run directory's name (a sweep job's name has its overrides).
    * ``version``: an MLflow run id to reopen (what :func:`open_loggers` passes back).

    Args:
        experiment_name: the MLflow experiment (``None``: as above).
        run_name: the MLflow run name (``None``: the run directory's name).
        version: the run id of an earlier command's MLflow run, to continue it.
        run_dir: the run directory (``paths.run_dir``), for the default run name and tags.
        kwargs: other ``MLFlowLogger`` arguments (``tracking_uri``, ``log_model``, ``tags``...).
    """
    from lightning.pytorch.loggers import MLFlowLogger

    uri = str(kwargs.pop("tracking_uri", "") or os.environ.get("MLFLOW_TRACKING_URI", ""))
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        path = Path(uri[len("file:") :].removeprefix("//")).expanduser()
        uri = path.resolve().as_uri()
    name = experiment_name or sweep_experiment() or DEFAULT_EXPERIMENT
    tags = dict(kwargs.pop("tags", None) or {})
    if run_dir:
        tags.setdefault("tunesmith.run_dir", str(Path(run_dir).resolve()))
    logger = MLFlowLogger(
        experiment_name=name,
        run_name=run_name or (Path(run_dir).name if run_dir else None),
        tracking_uri=uri or None,
        run_id=version or None,
        tags=tags or None,
        **kwargs,
    )
    if not version:
        from framework.distributed import is_global_zero

        if is_global_zero():
            logger._experiment_id = _ensure_experiment(logger._mlflow_client, name)
    return logger


def _ensure_experiment(client: Any, name: str) -> str:
    """The id of the MLflow experiment ``name``, created if needed (safe against a race)."""
    for _ in range(2):
        found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage != "deleted":
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name))
        except Exception:  # noqa: BLE001 - another job of the sweep created it just now
            continue
    raise ConfigError(
        f"Could not create or find the MLflow experiment '{name}'.",
        where="logger.mlflow.experiment_name",
        hint="name another one with logger.mlflow.experiment_name=..., or restore the deleted "
        "experiment (mlflow experiments restore) / empty its .trash.",
    )


def sweep_experiment() -> str | None:
    """The sweep's name when this process runs a job of a multirun (``-m``), else ``None``.

    It is the multirun directory's name (``hydra.sweep.dir``), which every job of a sweep
    shares, whatever launcher runs it.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return None
        return Path(str(HydraConfig.get().sweep.dir)).name or None
    except Exception:  # noqa: BLE001 - no Hydra context: not a sweep
        return None


#: The first contract's name of :func:`mlflow_logger` (``logger.mlflow._target_``).
mlflow_file_store = mlflow_logger


# --------------------------------------------------------------------------- hyperparameters


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The run's resolved config as a nested dict (each logger flattens it its own way)."""
    node = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(node, dict)
    node.pop("hydra", None)
    return node


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"base/<metric>": value, "tuned/<metric>": value}`` from what ``metrics.json`` holds
    (the names a sweep ranks by, e.g. ``tuned/exact_match``)."""
    out: dict[str, float] = {}
    for side in SIDES:
        for key, value in (results.get(side) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{side}/{key}"] = float(value)
    return out


# --------------------------------------------------------------------------- opening


def _saved(run: Run) -> dict[str, Any]:
    try:
        saved = json.loads((run.dir / TRACKERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _accepts(target: Any, name: str) -> bool:
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params  # named: a **kwargs that passes it on to a library may not take it


def _build(key: str, node: DictConfig, extra: dict[str, Any]) -> Any:
    try:
        target = get_method(str(node._target_))
    except Exception:  # noqa: BLE001 - reported by instantiate below, with the cause
        target = None
    kwargs = {k: v for k, v in extra.items() if target is not None and _accepts(target, k)}
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:  # Hydra wraps the library's own error
        cause = exc.__cause__ or exc
        raise ConfigError(
            f"Could not build logger.{key} ({node._target_}): {cause}",
            where=f"logger.{key}",
            hint="install the package it names (see docs/methods.md), fix the argument, "
            f"or drop it with logger.{key}=null.",
        ) from exc


def open_loggers(run: Run, resume: bool, append: bool = False) -> dict[str, Any]:
    """Build every logger of ``cfg.logger``; reopen the tracker runs of an earlier command.

    Args:
        run: the run (its config and directory).
        resume: continue the tracker runs recorded in ``trackers.json`` (training resumes
            from a checkpoint, or a later stage adds to a finished run); ``False`` opens new
            ones.
        append: ask loggers that can (``csv_logger``) to keep what they wrote before.

    Returns:
        ``{config key: Lightning logger}``, in config order.

    Raises:
        ConfigError: a logger cannot be built (a missing package, a wrong argument).
    """
    node = run.cfg.get("logger")
    if not node:
        return {}
    saved = _saved(run) if resume else {}
    built: dict[str, Any] = {}
    for key, value in node.items():
        if value is None or "_target_" not in value:
            continue
        extra: dict[str, Any] = {"append": append} if append else {}
        version = (saved.get(str(key)) or {}).get("version")
        if version not in (None, ""):
            extra["version"] = version
        built[str(key)] = _build(str(key), value, extra)
    return built


def record_versions(run: Run, loggers: dict[str, Any]) -> None:
    """Write each logger's version (its tracker run id) to ``trackers.json`` (rank 0 only).

    Call it after the loggers logged something: some (W&B) know their id only then.
    """
    from framework.distributed import is_global_zero

    if not loggers or not is_global_zero():
        return
    record = {}
    for key, logger in loggers.items():
        try:
            version = logger.version
        except Exception:  # noqa: BLE001 - a logger that cannot say: nothing to reopen
            version = None
        record[key] = {"target": type(logger).__name__, "version": _plain(version)}
    write_json(run.dir / TRACKERS_FILE, record)


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str) else str(value)


def start_training_loggers(run: Run, resume: bool) -> list[Any]:
    """The loggers of the train stage, with the resolved config logged as hyperparameters.

    Args:
        run: the run.
        resume: training continues from a checkpoint: continue its tracker runs too.
    """
    loggers = open_loggers(run, resume=resume)
    if loggers:
        params = hyperparameters(run.cfg)
        for logger in loggers.values():
            _safely(logger, "log_hyperparams", params)
        record_versions(run, loggers)
    return list(loggers.values())


def log_results(run: Run, results: dict[str, Any], step: int | None = None) -> list[Any]:
    """Give every logger the final metrics of the evaluate stage (``base/...``, ``tuned/...``).

    Reopens the tracker runs the train stage recorded (a new one, with the config as
    hyperparameters, for a logger that has none). A logger whose ``log_hyperparams`` takes
    ``metrics`` (TensorBoard) gets config and metrics together, which fills its HPARAMS tab;
    the others get the metrics at the last training step. Every logger is then finalized.
    A tracker that fails here is logged as a warning: the evaluation itself is done.

    Args:
        run: the run.
        results: what ``metrics.json`` holds.
        step: the step to log at (default: the last training step of ``train_summary.json``).

    Returns:
        The loggers used (finalized).
    """
    metrics = final_metrics(results)
    if not metrics or not run.cfg.get("logger"):
        return []
    saved = _saved(run)
    loggers = open_loggers(run, resume=True, append=True)
    params = hyperparameters(run.cfg)
    step = _last_step(run) if step is None else step
    for key, logger in loggers.items():
        if _accepts(logger.log_hyperparams, "metrics"):
            _safely(logger, "log_hyperparams", params, metrics=metrics)
        else:
            if key not in saved:  # a tracker run that saw no training: give it the config
                _safely(logger, "log_hyperparams", params)
            _safely(logger, "log_metrics", metrics, step=step)
        _safely(logger, "save")
        _safely(logger, "finalize", "success")
    record_versions(run, loggers)
    return list(loggers.values())


def _last_step(run: Run) -> int:
    try:
        summary = json.loads((run.dir / "train_summary.json").read_text(encoding="utf-8"))
        return int(summary.get("global_step") or 0)
    except (OSError, ValueError, TypeError):
        return 0


def _safely(logger: Any, method: str, *args: Any, **kwargs: Any) -> None:
    try:
        getattr(logger, method)(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a tracker must not fail a finished stage
        log.warning("logger %s: %s failed: %s", type(logger).__name__, method, exc)

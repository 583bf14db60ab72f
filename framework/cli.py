"""The Hydra application behind run.py: check, compose, run the stages, report errors plainly.

Every error a user can cause ends as one short message on stderr and a non-zero exit
status, never a traceback:

* 2: bad input (config, data, model folder, environment): a ``TunesmithError``, or a Hydra /
  OmegaConf config error rephrased by :mod:`framework.config_check`;
* 3: training diverged (NaN/inf loss);
* 130 / 143: interrupted by Ctrl-C / SIGTERM (a checkpoint was saved; re-run to continue).

The full traceback is shown with ``HYDRA_FULL_ERROR=1`` or ``TUNESMITH_DEBUG=1``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from framework.errors import ConfigError, TunesmithError
from framework.resolvers import ROOT_DIR, register_resolvers

log = logging.getLogger("tunesmith")

CONFIG_DIR = str(ROOT_DIR / "conf")
DEBUG_ENV = "TUNESMITH_DEBUG"

#: Set while :func:`hydra_raises` is active: what the user had in ``HYDRA_FULL_ERROR``.
USER_HYDRA_FULL_ERROR = "TUNESMITH_USER_HYDRA_FULL_ERROR"


def debug_enabled() -> bool:
    """Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1`` or ``TUNESMITH_DEBUG=1``)."""
    hydra_full = os.environ.get(USER_HYDRA_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR"))
    return hydra_full == "1" or os.environ.get(DEBUG_ENV) == "1"


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


def _log_to_files(message: str) -> None:
    """Put ``message`` in the run's log file only (the console gets it once, from main)."""
    record = logging.LogRecord("tunesmith", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


#: A single run's error, kept here so that main() reports it (Hydra would print a banner).
_pending: list[TunesmithError] = []


def in_multirun() -> bool:
    """Whether this job is one of a multirun (``-m``, or ``hydra.mode=MULTIRUN``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from framework.sweep import jobs as sweep

    multirun = in_multirun()
    try:
        metrics = train(cfg)
    except Exception as err:
        from framework.stops import RunInterrupted

        if multirun and isinstance(err, RunInterrupted):  # Ctrl-C / SIGTERM stops the sweep
            raise
        if multirun and not debug_enabled():
            sweep.job_failed(err)  # recorded in job.json by the sweep callback; the sweep goes on
            return None
        if not isinstance(err, TunesmithError) or debug_enabled():
            raise
        _log_to_files(err.format())
        _pending.append(err)  # main() reports it: one message, no Hydra banner
        return None
    if multirun:
        sweep.job_finished(metrics)
    return optimized_value(cfg, metrics)


def as_user_error(exc: BaseException) -> TunesmithError | None:
    """The :class:`TunesmithError` to show for ``exc``, or ``None`` if it is a bug."""
    from hydra.errors import HydraException

    from framework.config_check import explain

    if isinstance(exc, TunesmithError):
        return exc
    if isinstance(exc, HydraException | OmegaConfBaseException):
        return explain(exc)
    if isinstance(exc, ValueError) and _raised_by_hydra(exc):  # e.g. conflicting flags
        return ConfigError(str(exc), hint="python run.py --hydra-help lists Hydra's flags.")
    if isinstance(exc, OSError):  # a full disk, no permission, a read-only file system
        from framework.run import disk_error

        saved = disk_error(exc)
        if saved is not None:
            return saved
    return None


def _raised_by_hydra(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and f"{os.sep}hydra{os.sep}" in last.tb_frame.f_code.co_filename


def report(err: TunesmithError) -> int:
    """Print ``err`` for the user; return the exit status."""
    from framework.stops import RunInterrupted

    print(f"\nerror: {err.format()}", file=sys.stderr, flush=True)
    if not isinstance(err, RunInterrupted):
        print(f"(for the full traceback: HYDRA_FULL_ERROR=1 or {DEBUG_ENV}=1)", file=sys.stderr)
    return int(getattr(err, "exit_code", 2))


@contextmanager
def hydra_raises() -> Iterator[None]:
    """Let Hydra raise errors instead of printing them, so they can be rephrased here."""
    old = os.environ.get("HYDRA_FULL_ERROR")
    os.environ[USER_HYDRA_FULL_ERROR] = old or ""  # seen by jobs in launcher processes too
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        os.environ.pop(USER_HYDRA_FULL_ERROR, None)
        if old is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = old


def main() -> None:
    """Console entry point (``python run.py``; ``python run.py plugins`` lists the plugins)."""
    if sys.argv[1:2] == ["plugins"]:
        from framework.plugins_cli import main as plugins_main

        sys.exit(plugins_main(sys.argv[2:]))
    register_resolvers()
    debug = debug_enabled()
    from framework.distributed import worker_hydra_overrides

    sys.argv += worker_hydra_overrides()  # another node's process writes only its log file
    try:
        from framework.config_check import check_command_line

        check_command_line(sys.argv[1:], CONFIG_DIR)
        with hydra_raises():
            hydra_main()
        if _pending:
            raise _pending.pop()
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            "\nInterrupted (Ctrl-C). Re-run the same command to continue: finished stages "
            "are kept, training resumes from its last checkpoint.",
            file=sys.stderr,
        )
        sys.exit(130)
    except Exception as exc:
        err = as_user_error(exc)
        if err is None or debug:
            raise
        sys.exit(report(err))
    from framework.sweep.jobs import exit_status

    sys.exit(exit_status())

"""Multirun bookkeeping: record every job of a sweep, then summarise the sweep when it ends.

Three pieces work together:

* the task (``framework.cli``) reports each job's outcome here with :func:`job_finished` or
  :func:`job_failed` -- in a multirun a failing job is recorded and returns, so the sweep
  goes on;
* :class:`SweepCallback`, a Hydra callback registered in ``conf/hydra/default.yaml``, writes
  that outcome to ``job.json`` in the job's directory when the job ends (in the job's own
  process, whatever the launcher), and writes the sweep summary when the multirun ends;
* :func:`sweep_name` names the multirun directory from the command's overrides, so the same
  sweep command finds (and continues) the same directory, and every job of a sweep -- whatever
  model, method or data it picks -- lands in it.

``python -m framework.sweep.jobs <multirun dir>`` rebuilds the summary of a sweep afterwards
(e.g. after a SLURM sweep whose submitting shell was closed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from framework.errors import TunesmithError
from framework.sweep.records import JOB_FILE, JobRecord, choose_metric, collect_jobs, snapshot

log = logging.getLogger(__name__)

#: A sweep directory name longer than this is shortened and given a hash of the whole.
MAX_NAME = 80

# The outcome of the job running in this process, reported by the task, read by the callback.
_outcome: dict[str, Any] | None = None
# The multirun directory name chosen for the sweep running in this process.
_sweep_name: str | None = None
#: The summary of the last sweep this process ran (read by ``framework.cli`` for the exit status).
last_summary: Any = None


# --------------------------------------------------------------------------- the task's side


def job_finished(metrics: dict[str, Any]) -> None:
    """Report that the job running in this process finished with ``metrics``."""
    global _outcome
    _outcome = {"status": "finished", "metrics": metrics}


def job_failed(err: BaseException) -> None:
    """Report (and log) that the job running in this process failed with ``err``.

    A :class:`TunesmithError` is logged as its one-paragraph message; any other exception
    (a bug, an out-of-memory error...) with its traceback, into the job's log file.
    """
    global _outcome
    if isinstance(err, TunesmithError):
        text = err.format()
        log.error("job failed: %s", text)
        trace = None
    else:
        text = f"{type(err).__name__}: {err}"
        trace = "".join(traceback.format_exception(err))
        log.error("job failed: %s\n%s", text, trace)
    _outcome = {
        "status": "failed",
        "error": text,
        "error_type": type(err).__name__,
        "traceback": trace,
        "metrics": {},
    }


# --------------------------------------------------------------------------- naming


def _clean(text: str) -> str:
    """A path-safe version of an override string."""
    text = text.replace("/", "-").replace("\\", "-")
    return re.sub(r"[^\w.,=+\-\[\]:@%~]", "_", text)


def name_for(overrides: Sequence[str]) -> str:
    """The directory name of a sweep launched with ``overrides`` (deterministic).

    ``["optim.lr=1e-4,3e-4", "method=lora,full"]`` -> ``optim.lr=1e-4,3e-4__method=lora,full``;
    a name longer than :data:`MAX_NAME` keeps its start and gets a hash of the whole.
    """
    name = "__".join(_clean(o) for o in overrides if not o.startswith("hydra."))
    if not name:
        return "sweep"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9].rstrip('_,.-')}-{digest}"
    return name


def sweep_name() -> str:
    """The ``ts.sweep_name`` resolver: the name :class:`SweepCallback` chose for this sweep.

    The resolver is cached, and Hydra copies the multirun's resolver cache into every job's
    config, so every job (in this process, a joblib worker or a SLURM node) resolves the same
    ``hydra.sweep.dir``. Without the callback the name is the start time.
    """
    if _sweep_name is None:
        return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return _sweep_name


# --------------------------------------------------------------------------- the callback


def _is_multirun(config: DictConfig) -> bool:
    from hydra.types import RunMode

    return OmegaConf.select(config, "hydra.mode", default=None) == RunMode.MULTIRUN


class SweepCallback(Callback):
    """Records each job of a multirun in ``job.json`` and summarises the sweep at its end.

    Registered in ``conf/hydra/default.yaml`` as ``hydra.callbacks.sweep``.

    Args:
        metric: the metric to rank jobs by, a path into ``metrics.json`` such as
            ``tuned/exact_match``. Default: ``optimized_metric`` when the config has one,
            else ``tuned/<first evaluator metric>``.
        direction: ``minimize``, ``maximize`` or ``auto``: the Optuna sweeper's direction
            when it optimises this metric, else the direction the metric's plugin declared
            (recorded in each job's metrics), else ``maximize`` -- and the summary says that
            no direction was known. Never guessed from the metric's name.
        plot: whether to draw ``sweep_summary.png``.
    """

    def __init__(
        self, metric: str | None = None, direction: str = "auto", plot: bool = True
    ) -> None:
        self.metric = metric
        self.direction = direction
        self.plot = plot
        self._before: dict[str, int] = {}
        self._job_started: float | None = None

    # ----------------------------------------------------------------- multirun (main process)
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_name
        overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
        _sweep_name = name_for([str(o) for o in overrides or []])
        # the jobs an earlier sweep left in this directory, to leave out of this one's summary
        self._before = snapshot(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from framework.sweep.report import print_summary, summarize

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            log.warning("no sweep directory at %s: nothing to summarise", sweep_dir)
            return
        jobs = collect_jobs(sweep_dir, before=self._before)
        ranking = choose_metric(config, jobs, self.metric, self.direction)
        try:
            summary = summarize(
                sweep_dir,
                jobs,
                ranking.metric,
                ranking.direction,
                plot=self.plot,
                direction_source=ranking.source,
            )
        except Exception:  # a broken summary must not hide that the jobs ran
            log.exception("could not write the sweep summary in %s", sweep_dir)
            return
        global last_summary
        last_summary = summary
        print_summary(summary)

    # ----------------------------------------------------------------- each job (its process)
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _outcome
        _outcome = None
        self._job_started = time.time()
        if _is_multirun(config):
            stale = Path(str(config.hydra.runtime.output_dir)) / JOB_FILE
            stale.unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        global _outcome
        if not _is_multirun(config):
            return
        from framework.distributed import is_global_zero

        if not is_global_zero():  # a multi-process job (DDP, a SLURM task array): rank 0 writes
            _outcome = None
            return
        from hydra.core.utils import JobStatus

        job_dir = Path(str(config.hydra.runtime.output_dir))
        outcome = dict(_outcome or {})
        _outcome = None
        if job_return.status == JobStatus.FAILED and outcome.get("status") != "failed":
            err = job_return._return_value
            outcome = {
                "status": "failed",
                "error": err.format()
                if isinstance(err, TunesmithError)
                else f"{type(err).__name__}: {err}",
                "error_type": type(err).__name__,
                "traceback": "".join(traceback.format_exception(err)),
            }
        elif not outcome:
            # the task did not report (a task other than tunesmith's): what the run left
            saved = job_dir / "metrics.json"
            metrics = json.loads(saved.read_text(encoding="utf-8")) if saved.exists() else {}
            outcome = {"status": "finished", "metrics": metrics}
        started = self._job_started or time.time()
        record = JobRecord(
            num=int(OmegaConf.select(config, "hydra.job.num", default=-1)),
            dir=str(job_dir),
            overrides=[str(o) for o in job_return.overrides or []],
            status=outcome["status"],
            metrics=_plain(outcome.get("metrics") or {}),
            error=outcome.get("error"),
            error_type=outcome.get("error_type"),
            traceback=outcome.get("traceback"),
            started_at=datetime.fromtimestamp(started, UTC)
            .astimezone()
            .isoformat(timespec="seconds"),
            duration_s=round(time.time() - started, 2),
        )
        from framework.run import write_json

        write_json(job_dir / JOB_FILE, asdict(record))


def _plain(obj: Any) -> Any:
    """Metrics as plain JSON values (numbers stay numbers, anything else becomes text)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def exit_status() -> int:
    """``1`` when the sweep this process just ran had a job that did not finish, else ``0``.

    The sweep itself went on past the failure; the status tells a script or CI that a job
    needs a look. A single run (no sweep) gives ``0`` here.
    """
    summary = last_summary
    if summary is None:
        return 0
    bad = [r.job for r in summary.rows if r.job.status != "finished"]
    if not bad:
        return 0
    where = summary.files.get("md", summary.sweep_dir)
    print(
        f"\n{len(bad)} of {len(summary.rows)} jobs did not finish "
        f"(jobs {', '.join(str(j.num) for j in bad)}); see {where}",
        file=sys.stderr,
    )
    return 1


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m framework.sweep.jobs DIR``: (re)write and print the summary of a sweep."""
    parser = argparse.ArgumentParser(
        prog="python -m framework.sweep.jobs",
        description="Summarise a multirun directory: a table of its jobs (CSV, Markdown), "
        "sorted by a metric, and a plot of the metric against each swept value.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory")
    parser.add_argument("--metric", help="rank by this metric, e.g. tuned/exact_match")
    parser.add_argument(
        "--direction",
        choices=["auto", "minimize", "maximize"],
        default="auto",
        help="auto: the direction the metric declares (recorded in each job's metrics)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip sweep_summary.png")
    args = parser.parse_args(argv)
    from framework.sweep.report import print_summary, summarize

    if not args.sweep_dir.is_dir():
        print(f"error: no directory {args.sweep_dir}", file=sys.stderr)
        return 2
    jobs = collect_jobs(args.sweep_dir)
    if not jobs:
        print(f"error: {args.sweep_dir} holds no job directories", file=sys.stderr)
        return 2
    saved = args.sweep_dir / "multirun.yaml"
    config = OmegaConf.load(saved) if saved.exists() else None
    # what the sweep was ranked by when it ended, unless the command line says otherwise
    chosen = OmegaConf.select(config, "hydra.callbacks.sweep", default=None) if config else None
    metric = args.metric or (chosen.get("metric") if chosen else None)
    direction = args.direction
    if direction == "auto" and chosen and not args.metric:
        direction = str(chosen.get("direction") or "auto")
    ranking = choose_metric(config, jobs, metric, direction)
    summary = summarize(
        args.sweep_dir,
        jobs,
        ranking.metric,
        ranking.direction,
        plot=not args.no_plot,
        direction_source=ranking.source,
    )
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

``python -m framework.sweep <multirun dir>`` rebuilds the summary of a sweep afterwards
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from framework.errors import TunesmithError

log = logging.getLogger(__name__)

#: Each job's record, in the job's directory.
JOB_FILE = "job.json"

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


# --------------------------------------------------------------------------- records


@dataclass
class JobRecord:
    """What ``job.json`` holds about one job of a sweep."""

    num: int
    dir: str
    overrides: list[str]
    status: str  # finished | failed | incomplete
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    started_at: str | None = None
    duration_s: float | None = None

    def params(self) -> dict[str, str]:
        """The job's overrides as ``{key: value}`` (``+key``/``++key`` shown as ``key``)."""
        out: dict[str, str] = {}
        for item in self.overrides:
            key, sep, value = item.partition("=")
            if sep:
                out[key.lstrip("+")] = value
            else:  # ~key: a deletion
                out[item] = ""
        return out


def _job_num(job_dir: Path) -> int:
    match = re.match(r"(\d+)", job_dir.name)
    return int(match.group(1)) if match else -1


def read_job(job_dir: Path) -> JobRecord | None:
    """The record of the job in ``job_dir``; ``None`` if it is not a job directory.

    A job without ``job.json`` (killed, still running, or run without the callback) is
    described from what it left: ``run_state.json`` and ``metrics.json``.
    """
    path = job_dir / JOB_FILE
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f for f in JobRecord.__dataclass_fields__}
        return JobRecord(**{k: v for k, v in data.items() if k in known})
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.exists():
        return None
    overrides = [str(o) for o in OmegaConf.load(overrides_file)]
    state_file = job_dir / "run_state.json"
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else {}
    metrics_file = job_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.exists() else {}
    status = "finished" if state.get("status") == "finished" else "incomplete"
    return JobRecord(
        num=_job_num(job_dir),
        dir=str(job_dir),
        overrides=overrides,
        status=status,
        metrics=metrics,
        error=None if status == "finished" else "no job.json: the job was killed or is running",
    )


def _marker(job_dir: Path) -> Path:
    """The file Hydra writes when a job starts (so its mtime tells when the job last ran)."""
    return job_dir / ".hydra" / "overrides.yaml"


def snapshot(sweep_dir: Path) -> dict[str, int]:
    """``{job dir name: start mark}`` of the jobs already in ``sweep_dir`` (before a sweep)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return {}
    return {
        p.name: _marker(p).stat().st_mtime_ns for p in sweep_dir.iterdir() if _marker(p).exists()
    }


def collect_jobs(sweep_dir: Path, before: dict[str, int] | None = None) -> list[JobRecord]:
    """Every job under ``sweep_dir``, by job number.

    Args:
        sweep_dir: the multirun directory.
        before: a :func:`snapshot` taken when the sweep started: jobs it lists that did not
            run again since (an earlier sweep into the same directory) are left out. Only
            file times are compared, so a cluster node's clock does not matter.
    """
    jobs = []
    for job_dir in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        marker = _marker(job_dir)
        ran_before = before and job_dir.name in before and marker.exists()
        if ran_before and marker.stat().st_mtime_ns == before[job_dir.name]:
            continue
        record = read_job(job_dir)
        if record is not None:
            jobs.append(record)
    return sorted(jobs, key=lambda j: (j.num, j.dir))


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
        direction: ``minimize``, ``maximize`` or ``auto`` (the Optuna sweeper's direction
            when it optimises this metric; else ``minimize`` for losses, perplexity and
            error rates, ``maximize`` for the rest).
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
        from framework.sweep_report import print_summary, summarize

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            log.warning("no sweep directory at %s: nothing to summarise", sweep_dir)
            return
        jobs = collect_jobs(sweep_dir, before=self._before)
        metric, direction = choose_metric(config, jobs, self.metric, self.direction)
        try:
            summary = summarize(sweep_dir, jobs, metric, direction, plot=self.plot)
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


# --------------------------------------------------------------------------- metric choice

#: Words in a metric name that mean lower is better.
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error", "wer", "cer", "time", "latency")


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"tuned": {"perplexity": 3.1}}`` -> ``{"tuned/perplexity": 3.1}`` (numbers only)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{path}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def infer_direction(metric: str) -> str:
    """``minimize`` for losses, perplexity and error rates; ``maximize`` otherwise."""
    leaf = metric.rsplit("/", 1)[-1].lower()
    return "minimize" if any(word in leaf for word in LOWER_IS_BETTER) else "maximize"


def choose_metric(
    config: DictConfig | None,
    jobs: list[JobRecord],
    metric: str | None = None,
    direction: str = "auto",
) -> tuple[str | None, str]:
    """The metric to rank a sweep by, and its direction (see :class:`SweepCallback`)."""
    optimized = OmegaConf.select(config, "optimized_metric", default=None) if config else None
    chosen = metric or optimized
    if not chosen:
        reported: list[str] = []
        for job in jobs:
            reported += [k for k in flatten(job.metrics) if k not in reported]
        names = OmegaConf.select(config, "evaluator.metrics", default=None) if config else None
        preferred = [f"tuned/{m}" for m in (names or [])]
        chosen = next((m for m in preferred if m in reported), None)
        if chosen is None:
            chosen = next((m for m in reported if m.startswith("tuned/")), None)
        if chosen is None and reported:
            chosen = reported[0]
    if direction in ("minimize", "maximize"):
        return chosen, direction
    if chosen and chosen == optimized and config is not None:
        sweeper_direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        if isinstance(sweeper_direction, Sequence) and not isinstance(sweeper_direction, str):
            sweeper_direction = sweeper_direction[0] if sweeper_direction else None
        if sweeper_direction:
            return chosen, str(sweeper_direction).lower().removeprefix("studydirection.")
    return chosen, infer_direction(chosen) if chosen else "minimize"


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
    """``python -m framework.sweep DIR``: (re)write and print the summary of a sweep."""
    parser = argparse.ArgumentParser(
        prog="python -m framework.sweep",
        description="Summarise a multirun directory: a table of its jobs (CSV, Markdown), "
        "sorted by a metric, and a plot of the metric against each swept value.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory")
    parser.add_argument("--metric", help="rank by this metric, e.g. tuned/exact_match")
    parser.add_argument("--direction", choices=["auto", "minimize", "maximize"], default="auto")
    parser.add_argument("--no-plot", action="store_true", help="skip sweep_summary.png")
    args = parser.parse_args(argv)
    from framework.sweep_report import print_summary, summarize

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
    metric, direction = choose_metric(config, jobs, metric, direction)
    print_summary(summarize(args.sweep_dir, jobs, metric, direction, plot=not args.no_plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())

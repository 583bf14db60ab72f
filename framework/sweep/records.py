"""What a sweep's jobs left behind: one ``job.json`` per job, read back, and the metric to rank by."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from framework.evaluate.report import DIRECTIONS, STDERR

#: Each job's record, in the job's directory.
JOB_FILE = "job.json"

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


# --------------------------------------------------------------------------- metric choice

#: The direction a sweep is ranked in when nothing says which way is better: the metric
#: declares none, no ``direction`` was given and no Optuna sweeper optimises it.
DEFAULT_DIRECTION = "maximize"
#: Keys of a run's metrics that describe the others rather than being metrics themselves.
META_KEYS = (DIRECTIONS, STDERR)


class Ranking(NamedTuple):
    """The metric a sweep is ranked by, its direction, and where the direction came from.

    Attributes:
        metric: a path into the run's metrics (``tuned/exact_match``), or ``None``.
        direction: ``minimize`` or ``maximize``.
        source: ``given`` (the callback's or the command's ``direction``), ``optuna`` (the
            sweeper's direction for ``optimized_metric``), ``declared`` (what the metric's
            plugin declared, recorded in each job's metrics) or ``default`` (nothing said:
            :data:`DEFAULT_DIRECTION`).
    """

    metric: str | None
    direction: str
    source: str


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"tuned": {"perplexity": 3.1}}`` -> ``{"tuned/perplexity": 3.1}`` (numbers only;
    the recorded directions and standard errors are left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not prefix and key in META_KEYS:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{path}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def recorded_direction(metrics: dict[str, Any], metric: str) -> str | None:
    """``minimize`` / ``maximize`` for the path ``metric`` (``tuned/wer``) from the directions a
    run recorded with its metrics (``{"directions": {"wer": "lower"}}``), or ``None``.

    The path itself is looked up first, then what follows its first parts (``tuned/wer`` ->
    ``wer``), so a side's metric takes its metric's direction.
    """
    directions = metrics.get(DIRECTIONS)
    if not isinstance(directions, dict):
        return None
    parts = metric.split("/")
    for i in range(len(parts)):
        key = "/".join(parts[i:])
        if key in directions:
            return {"higher": "maximize", "lower": "minimize"}.get(str(directions[key]))
    return None


def _sweeper_direction(config: DictConfig) -> str | None:
    sweeper_direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    if isinstance(sweeper_direction, Sequence) and not isinstance(sweeper_direction, str):
        sweeper_direction = sweeper_direction[0] if sweeper_direction else None
    if not sweeper_direction:
        return None
    return str(sweeper_direction).lower().removeprefix("studydirection.")


def choose_metric(
    config: DictConfig | None,
    jobs: list[JobRecord],
    metric: str | None = None,
    direction: str = "auto",
) -> Ranking:
    """The metric to rank a sweep by, and its direction (see :class:`SweepCallback`).

    The direction, first found: ``direction`` when it is ``minimize``/``maximize``; the
    Optuna sweeper's ``hydra.sweeper.direction`` when the metric is ``optimized_metric``;
    the direction the jobs recorded for it (declared by the metric's plugin); else
    :data:`DEFAULT_DIRECTION`. Never a guess from the metric's name.
    """
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
        return Ranking(chosen, direction, "given")
    if chosen and chosen == optimized and config is not None:
        sweeper = _sweeper_direction(config)
        if sweeper:
            return Ranking(chosen, sweeper, "optuna")
    if chosen:
        for job in jobs:
            recorded = recorded_direction(job.metrics, chosen)
            if recorded is not None:
                return Ranking(chosen, recorded, "declared")
    return Ranking(chosen, DEFAULT_DIRECTION, "default")

"""What the board knows about runs and sweeps: found under the output root, read from their files.

A *run* is a directory with ``run_state.json``, or a ``config.yaml`` whose ``stages`` hold a
recorded stage (a session stage such as ``board`` or ``serve`` writes a ``config.yaml`` too,
but is not a run). A *sweep* is a ``multirun/`` directory; its jobs are runs. Everything is
read with the tolerant readers of :mod:`plugins.board.files`: a half-written file gives
less information, never an error.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugins.board.files import (
    read_csv_rows,
    read_json,
    read_jsonl,
    read_text,
    read_yaml,
    relative_to,
)

STATE_FILE = "run_state.json"
#: How deep under the output root runs are looked for.
MAX_DEPTH = 4
#: Config keys shown as a run's key hyperparameters (when the run has them).
KEY_HPARAMS = (
    "optim.lr",
    "trainer.max_steps",
    "trainer.max_epochs",
    "data.batch_size",
    "data.max_length",
    "method.r",
    "objective",
    "seed",
)
#: The stages a run records (what makes a config.yaml a run); other stages are sessions.
STATUSES = ("running", "finished", "failed", "interrupted", "new")


@dataclass
class RunInfo:
    """One run directory, summarised for the runs list."""

    path: str
    dir: Path
    name: str
    status: str
    stages_done: list[str]
    error: str | None
    model: str
    method: str
    data: str
    hparams: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    sweep: str | None
    modified: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "status": self.status,
            "stages_done": self.stages_done,
            "error": self.error,
            "model": self.model,
            "method": self.method,
            "data": self.data,
            "hparams": self.hparams,
            "metrics": self.metrics,
            "sweep": self.sweep,
            "modified": self.modified,
            "modified_text": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified)),
        }


# --------------------------------------------------------------------------- config


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config (``config.yaml``, else Hydra's copy), or ``{}``."""
    for candidate in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        cfg = read_yaml(candidate)
        if isinstance(cfg, dict):
            return cfg
    return {}


def select(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    """``cfg`` at the dotted ``key`` (``default`` when absent)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested dict (lists are leaves)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node} if prefix else {}


def config_diff(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The keys whose values differ between ``configs``: ``[{"key", "values": [...]}]``."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    missing = object()
    rows = []
    for key in keys:
        values = [f.get(key, missing) for f in flats]
        shown = [None if v is missing else v for v in values]
        if len({repr(v) for v in values}) > 1:
            rows.append({"key": key, "values": shown})
    return rows


# --------------------------------------------------------------------------- status


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_holder(run_dir: Path) -> int | None:
    text = read_text(run_dir / ".lock", limit=64)
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def run_status(run_dir: Path) -> tuple[str, list[str], str | None]:
    """``(status, stages done, error)`` from ``run_state.json``.

    A run marked ``running`` whose process is gone (killed) is ``interrupted``: re-running
    its command continues it.
    """
    state = read_json(run_dir / STATE_FILE)
    if not isinstance(state, dict):
        return ("new", [], None)
    status = str(state.get("status") or "new")
    if status not in STATUSES:
        status = "new"
    done = [str(s) for s in state.get("stages_done") or [] if isinstance(s, str)]
    error = state.get("error")
    if status == "running":
        pid = _lock_holder(run_dir)
        if pid is None or not _pid_alive(pid):
            status, error = "interrupted", error or "the process ended without saying why (killed?)"
    return status, done, str(error) if error else None


# --------------------------------------------------------------------------- metrics


def run_metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    """``{"base": {...}, "tuned": {...}}`` from ``metrics.json`` (numbers only, flattened)."""
    data = read_json(run_dir / "metrics.json")
    out: dict[str, dict[str, float]] = {}
    if not isinstance(data, dict):
        return out
    for side, values in data.items():
        if isinstance(values, dict):
            flat = {
                k: float(v)
                for k, v in flatten(values).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            if flat:
                out[str(side)] = flat
    return out


def metric_direction(plugins: Any, key: str) -> str | None:
    """``higher``, ``lower`` or ``None`` for a metric key, from the metric's descriptor
    (the metric whose name is the longest prefix of ``key``: ``rouge`` for ``rougeL``)."""
    if plugins is None:
        return None
    leaf = key.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    best = None
    for name in plugins.names("metric"):
        if leaf.startswith(name) and (best is None or len(name) > len(best)):
            best = name
    info = plugins.describe("metric", best) if best else None
    return getattr(info, "direction", None)


# --------------------------------------------------------------------------- curves


def metrics_csv(run_dir: Path) -> Path | None:
    """The CSV logger's ``metrics.csv`` of a run (the newest, if there are several)."""
    logs = run_dir / "logs"
    if not logs.is_dir():
        return None
    found = [p for p in logs.glob("**/metrics.csv") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """``{column: [[step, value], ...]}`` for each logged number of ``logs/metrics.csv``."""
    path = metrics_csv(run_dir)
    if path is None:
        return {}
    series: dict[str, list[list[float]]] = {}
    for row in read_csv_rows(path):
        try:
            step = float(row.get("step") or "nan")
        except ValueError:
            continue
        if math.isnan(step):
            continue
        for key, value in row.items():
            if key in ("step", "epoch") or not value:
                continue
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                series.setdefault(key, []).append([step, number])
    return series


# --------------------------------------------------------------------------- discovery


def is_run_dir(path: Path, sessions: set[str] | None = None) -> bool:
    """Whether ``path`` holds a run (not only what a session stage wrote)."""
    if (path / STATE_FILE).is_file():
        return True
    cfg = read_yaml(path / "config.yaml")
    if not isinstance(cfg, dict):
        return False
    stages = cfg.get("stages")
    if not isinstance(stages, list):
        return False
    sessions = sessions if sessions is not None else {"board", "chat", "serve"}
    return any(str(s) not in sessions for s in stages)


def _walk(root: Path, depth: int) -> Iterator[Path]:
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        yield child
        if depth > 1:
            yield from _walk(child, depth - 1)


def summarize(root: Path, run_dir: Path, sweep: str | None = None) -> RunInfo:
    """The runs-list entry of ``run_dir``."""
    cfg = run_config(run_dir)
    status, done, error = run_status(run_dir)
    data_name = str(select(cfg, "data.name", "") or "")
    data_path = select(cfg, "data.path")
    if isinstance(data_path, str) and data_path:
        data_name = f"{data_name} ({Path(data_path).name})" if data_name else Path(data_path).name
    hparams = {k: select(cfg, k) for k in KEY_HPARAMS if select(cfg, k) is not None}
    try:
        modified = max(
            (
                p.stat().st_mtime
                for p in (run_dir / STATE_FILE, run_dir / "config.yaml")
                if p.exists()
            ),
            default=run_dir.stat().st_mtime,
        )
    except OSError:
        modified = 0.0
    return RunInfo(
        path=relative_to(root, run_dir),
        dir=run_dir,
        name=str(cfg.get("run_name") or run_dir.name),
        status=status,
        stages_done=done,
        error=error,
        model=str(select(cfg, "model.name", "") or ""),
        method=str(select(cfg, "method.name", "") or ""),
        data=data_name,
        hparams=hparams,
        metrics=run_metrics(run_dir),
        sweep=sweep,
        modified=modified,
    )


def is_sweep_dir(path: Path) -> bool:
    """Whether ``path`` is a multirun directory (its summary, or Hydra's multirun.yaml)."""
    return (path / "multirun.yaml").is_file() or (path / "sweep_summary.json").is_file()


def find_runs(root: Path, sessions: set[str] | None = None) -> tuple[list[RunInfo], list[dict]]:
    """Every run and sweep under ``root``, newest first: ``(runs, sweeps)``."""
    root = Path(root)
    runs: list[RunInfo] = []
    sweeps: list[dict] = []
    if not root.is_dir():
        return runs, sweeps
    sweep_dirs: set[Path] = set()
    for path in _walk(root, MAX_DEPTH):
        if any(parent in sweep_dirs for parent in path.parents):
            continue
        if is_sweep_dir(path):
            sweep_dirs.add(path)
            sweeps.append(sweep_summary(root, path, sessions))
            continue
        if is_run_dir(path, sessions):
            runs.append(summarize(root, path))
    for sweep in sweeps:
        runs.extend(sweep.pop("_jobs"))
    runs.sort(key=lambda r: r.modified, reverse=True)
    sweeps.sort(key=lambda s: s["modified"], reverse=True)
    return runs, sweeps


def sweep_summary(root: Path, sweep_dir: Path, sessions: set[str] | None = None) -> dict:
    """A sweep: its jobs (as runs), and what ``sweep_summary.json`` says (best job marked)."""
    rel = relative_to(root, sweep_dir)
    summary = read_json(sweep_dir / "sweep_summary.json")
    summary = summary if isinstance(summary, dict) else {}
    jobs = [
        summarize(root, p, sweep=rel)
        for p in sorted(sweep_dir.iterdir())
        if p.is_dir()
        and not p.is_symlink()
        and not p.name.startswith(".")
        and is_run_dir(p, sessions)
    ]
    best_dir = (summary.get("best") or {}).get("dir")
    best = None
    for job in jobs:
        if best_dir and Path(str(best_dir)).name == job.dir.name:
            best = job.path
    ranks = {}
    for row in summary.get("jobs") or []:
        if isinstance(row, dict) and row.get("dir"):
            ranks[Path(str(row["dir"])).name] = row
    try:
        modified = sweep_dir.stat().st_mtime
    except OSError:
        modified = 0.0
    rows = [
        {
            **job.as_dict(),
            "rank": (ranks.get(job.dir.name) or {}).get("rank"),
            "value": (ranks.get(job.dir.name) or {}).get("value"),
            "best": job.path == best,
        }
        for job in jobs
    ]
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, r["path"]))
    return {
        "path": rel,
        "name": sweep_dir.name,
        "metric": summary.get("metric"),
        "direction": summary.get("direction"),
        "swept": summary.get("swept") or [],
        "counts": summary.get("counts") or {},
        "best": best,
        "jobs": rows,
        "has_plot": (sweep_dir / "sweep_summary.png").is_file(),
        "markdown": read_text(sweep_dir / "sweep_summary.md", limit=200_000) or "",
        "modified": modified,
        "modified_text": time.strftime("%Y-%m-%d %H:%M", time.localtime(modified)),
        "_jobs": jobs,
    }


# --------------------------------------------------------------------------- one run


def data_report(run_dir: Path) -> dict[str, Any]:
    """The data report of a run: counts, token stats, rejects (with ``file:line``), removed
    examples, and the spot check split into learned / not-learned spans."""
    data = run_dir / "data"
    report = read_json(data / "report.json")
    return {
        "report": report if isinstance(report, dict) else None,
        "rejects": read_jsonl(data / "rejects.jsonl", limit=500),
        "removed": read_jsonl(data / "removed.jsonl", limit=500),
        "spot_check": spot_check(read_text(data / "spot_check.md") or ""),
        "has_lengths_plot": (data / "lengths.png").is_file(),
    }


MASK_OPEN, MASK_CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧ mark text that carries no loss


def spot_check(markdown: str) -> list[dict[str, Any]]:
    """The examples of ``spot_check.md``: ``{"title", "note", "spans": [[text, learned]]}``."""
    examples: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    in_block = False
    block: list[str] = []
    for line in markdown.splitlines():
        if not in_block and line.startswith("## "):
            current = {"title": line[3:].strip(), "note": "", "spans": []}
            examples.append(current)
        elif line.startswith("````"):
            if in_block and current is not None:
                current["spans"] = mask_spans("\n".join(block))
            in_block, block = not in_block, []
        elif in_block:
            block.append(line)
        elif current is not None and line.strip():
            current["note"] = (current["note"] + " " + line.strip()).strip()
    return examples


def mask_spans(text: str) -> list[list[Any]]:
    """Split ``text`` at ⟦ ⟧ into ``[[text, learned: bool], ...]``."""
    spans: list[list[Any]] = []
    learned = True
    buf = ""
    for ch in text:
        if ch in (MASK_OPEN, MASK_CLOSE):
            if buf:
                spans.append([buf, learned])
            buf, learned = "", ch == MASK_CLOSE
        else:
            buf += ch
    if buf:
        spans.append([buf, learned])
    return spans


def sides_of(rows: list[dict]) -> list[str]:
    """The answer columns of prediction rows (``base``, ``tuned``), in that order."""
    seen = [s for s in ("base", "tuned") if any(s in r for r in rows)]
    return seen

"""The sweep summary: a table of a multirun's jobs (CSV, Markdown, JSON), ranked, and a plot.

Written into the multirun directory by :class:`framework.sweep.jobs.SweepCallback` when a sweep
ends (and by ``python -m framework.sweep.jobs DIR``):

* ``sweep_summary.csv`` / ``sweep_summary.md`` / ``sweep_summary.json``: one row per job --
  its rank, whether it is the best, its status, the value of each swept override, every
  metric it reported, its error if it failed, and all of its overrides;
* ``sweep_summary.png``: the ranking metric against each swept value (one panel per swept
  key, one line per combination of the other swept keys, the best job starred).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from framework.run import atomic_path, write_json
from framework.sweep.records import DEFAULT_DIRECTION, JobRecord, flatten

STEM = "sweep_summary"
BEST_MARK = "★"


@dataclass
class Row:
    """One job in the summary, in ranking order."""

    rank: int
    best: bool
    job: JobRecord
    params: dict[str, str]
    metrics: dict[str, float]
    value: float | None


@dataclass
class SweepSummary:
    """A ranked sweep and the files it was written to."""

    sweep_dir: Path
    metric: str | None
    direction: str
    swept: list[str]
    fixed: list[str]
    metric_columns: list[str]
    rows: list[Row]
    files: dict[str, Path] = field(default_factory=dict)
    #: where ``direction`` came from: ``given``, ``optuna``, ``declared`` or ``default``
    #: (see :class:`framework.sweep.records.Ranking`).
    direction_source: str = "given"

    @property
    def best(self) -> Row | None:
        return next((r for r in self.rows if r.best), None)

    def direction_note(self) -> str:
        """Why the ranking goes this way, when a person should know: only when no direction
        was given or declared and the default was used."""
        if self.metric is None or self.direction_source != "default":
            return ""
        return (
            f"No direction is known for {self.metric}: its metric declares none and none was "
            f"given, so jobs are ranked by the default ({DEFAULT_DIRECTION}). Choose with "
            "hydra.callbacks.sweep.direction=minimize|maximize (or --direction)."
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for row in self.rows:
            out[row.job.status] += 1
        return dict(out)


# --------------------------------------------------------------------------- building


def _value(job: JobRecord, metric: str | None) -> float | None:
    if metric is None or job.status != "finished":
        return None
    value = flatten(job.metrics).get(metric)
    return None if value is None or math.isnan(value) else value


def swept_keys(jobs: list[JobRecord]) -> tuple[list[str], list[str]]:
    """``(swept, fixed)``: the override keys whose value differs between jobs, and the
    overrides every job shares (as ``key=value``)."""
    order: list[str] = []
    values: dict[str, set[str | None]] = defaultdict(set)
    params = [job.params() for job in jobs]
    for p in params:
        order += [k for k in p if k not in order]
    for key in order:
        for p in params:
            values[key].add(p.get(key))
    swept = [k for k in order if len(values[k]) > 1]
    fixed = [f"{k}={next(iter(values[k]))}" for k in order if len(values[k]) == 1]
    return swept, fixed


def rank(jobs: list[JobRecord], metric: str | None, direction: str) -> list[Row]:
    """Jobs in ranking order: those with the metric (best first), then the other finished
    jobs, then the failed and incomplete ones."""
    sign = 1.0 if direction == "minimize" else -1.0

    def key(job: JobRecord) -> tuple[int, float, int]:
        value = _value(job, metric)
        if value is not None:
            return 0, sign * value, job.num
        return (1 if job.status == "finished" else 2), 0.0, job.num

    rows = []
    for i, job in enumerate(sorted(jobs, key=key), start=1):
        value = _value(job, metric)
        rows.append(
            Row(
                rank=i,
                best=i == 1 and value is not None,
                job=job,
                params=job.params(),
                metrics=flatten(job.metrics),
                value=value,
            )
        )
    return rows


def _metric_columns(rows: list[Row], metric: str | None) -> list[str]:
    seen: list[str] = []
    for row in rows:
        seen += [k for k in row.metrics if k not in seen]

    def order(name: str) -> tuple[int, str]:
        if name == metric:
            return 0, ""
        for i, prefix in enumerate(("tuned/", "base/"), start=1):
            if name.startswith(prefix):
                return i, name
        return 3, name

    return sorted(seen, key=order)


def summarize(
    sweep_dir: Path,
    jobs: list[JobRecord],
    metric: str | None,
    direction: str,
    plot: bool = True,
    direction_source: str = "given",
) -> SweepSummary:
    """Rank ``jobs`` by ``metric`` and write the summary files into ``sweep_dir``.

    Args:
        sweep_dir: the multirun directory.
        jobs: its jobs (:func:`framework.sweep.records.collect_jobs`).
        metric: the path of the metric to rank by (``tuned/exact_match``), or ``None``.
        direction: ``minimize`` or ``maximize``.
        plot: whether to draw ``sweep_summary.png``.
        direction_source: where the direction came from (``given``, ``optuna``,
            ``declared``, ``default``); the summary says so when it is the default.
    """
    sweep_dir = Path(sweep_dir)
    swept, fixed = swept_keys(jobs)
    rows = rank(jobs, metric, direction)
    summary = SweepSummary(
        sweep_dir=sweep_dir,
        metric=metric,
        direction=direction,
        swept=swept,
        fixed=fixed,
        metric_columns=_metric_columns(rows, metric),
        rows=rows,
        direction_source=direction_source,
    )
    summary.files["csv"] = write_csv(summary, sweep_dir / f"{STEM}.csv")
    summary.files["json"] = write_summary_json(summary, sweep_dir / f"{STEM}.json")
    if plot:
        summary.files["png"] = plot_summary(summary, sweep_dir / f"{STEM}.png")
    summary.files["md"] = write_markdown(summary, sweep_dir / f"{STEM}.md")
    return summary


# --------------------------------------------------------------------------- writing


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _first_line(text: str | None, limit: int = 100) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _cells(
    row: Row, summary: SweepSummary, metrics: list[str], error_width: int = 100
) -> list[str]:
    """A job's cells in the summary tables: rank, best, job, status, swept values, metrics, error."""
    return [
        str(row.rank),
        BEST_MARK if row.best else "",
        str(row.job.num),
        row.job.status,
        *[row.params.get(k, "") for k in summary.swept],
        *[_fmt(row.metrics.get(k)) for k in metrics],
        _first_line(row.job.error, error_width),
    ]


def _job_label(row: Row, summary: SweepSummary) -> str:
    return " ".join(f"{k}={row.params.get(k, '')}" for k in summary.swept) or " ".join(
        row.job.overrides
    )


def write_csv(summary: SweepSummary, path: Path) -> Path:
    """``sweep_summary.csv``: every job, every metric, the full error and overrides."""
    header = ["rank", "best", "job", "status", *summary.swept, *summary.metric_columns]
    header += ["duration_s", "error", "overrides", "dir"]
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in summary.rows:
            writer.writerow(
                [
                    row.rank,
                    row.best,
                    row.job.num,
                    row.job.status,
                    *[row.params.get(k, "") for k in summary.swept],
                    *[row.metrics.get(k, "") for k in summary.metric_columns],
                    "" if row.job.duration_s is None else row.job.duration_s,
                    row.job.error or "",
                    " ".join(row.job.overrides),
                    row.job.dir,
                ]
            )
    return path


def write_summary_json(summary: SweepSummary, path: Path) -> Path:
    """``sweep_summary.json``: the same, for programs."""
    best = summary.best
    write_json(
        path,
        {
            "sweep_dir": str(summary.sweep_dir),
            "metric": summary.metric,
            "direction": summary.direction,
            "direction_source": summary.direction_source,
            "swept": summary.swept,
            "fixed": summary.fixed,
            "counts": summary.counts(),
            "best": None
            if best is None
            else {
                "job": best.job.num,
                "value": best.value,
                "dir": best.job.dir,
                "overrides": best.job.overrides,
            },
            "jobs": [
                {"rank": r.rank, "best": r.best, "value": r.value, **asdict(r.job)}
                for r in summary.rows
            ],
        },
    )
    return path


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(summary: SweepSummary, path: Path) -> Path:
    """``sweep_summary.md``: the table a person reads, with the plot below it."""
    counts = summary.counts()
    lines = [
        "# Sweep summary",
        "",
        f"`{summary.sweep_dir}`: {_jobs(len(summary.rows))} ("
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + ").",
        "",
    ]
    if summary.metric:
        lines.append(f"Ranked by **{summary.metric}** ({summary.direction}).")
        if summary.direction_note():
            lines += ["", summary.direction_note()]
    else:
        lines.append("No job reported a metric: jobs are listed by number.")
    best = summary.best
    if best is not None:
        lines += [
            "",
            f"Best: job {best.job.num} ({_md(_job_label(best, summary))}): "
            f"{summary.metric} = {_fmt(best.value)}, in `{Path(best.job.dir).name}`.",
        ]
    if summary.fixed:
        lines += ["", "Same in every job: " + " ".join(f"`{_md(o)}`" for o in summary.fixed)]
    header = ["rank", "best", "job", "status", *summary.swept, *summary.metric_columns, "error"]
    align = ["---:", ":---:", "---:", "---", *["---"] * len(summary.swept)]
    align += ["---:"] * len(summary.metric_columns) + ["---"]
    lines += ["", "| " + " | ".join(_md(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    for row in summary.rows:
        cells = _cells(row, summary, summary.metric_columns)
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    if "png" in summary.files:
        alt = f"{summary.metric or 'metric'} against each swept value"
        lines += ["", f"![{alt}]({summary.files['png'].name})"]
    lines += ["", f"Every column and the full errors: `{STEM}.csv`; per job: `<job dir>/job.json`."]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- plot


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def plot_summary(summary: SweepSummary, path: Path) -> Path:
    """``sweep_summary.png``: the metric against each swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = summary.swept or ["job"]
    points = [r for r in summary.rows if r.value is not None]
    fig, axes = plt.subplots(
        1, len(keys), figsize=(4.8 * len(keys) + 0.6, 4.2), squeeze=False, sharey=True
    )
    for ax, key in zip(axes[0], keys, strict=True):
        raw = {id(r): str(r.job.num) if key == "job" else r.params.get(key, "") for r in points}
        numeric = bool(points) and all(_as_float(v) is not None for v in raw.values())
        categories = list(dict.fromkeys(raw.values()))
        x = {i: float(v) if numeric else float(categories.index(v)) for i, v in raw.items()}

        others = [k for k in summary.swept if k != key]
        groups: dict[str, list[Row]] = defaultdict(list)
        for r in points:
            groups[", ".join(f"{k}={r.params.get(k, '')}" for k in others)].append(r)
        for label, members in groups.items():
            members.sort(key=lambda r, x=x: x[id(r)])
            ax.plot(
                [x[id(r)] for r in members],
                [r.value for r in members],
                marker="o",
                linestyle="-" if len(members) > 1 else "none",
                label=label or None,
            )
        best = summary.best
        if best is not None:
            ax.scatter(
                [x[id(best)]],
                [best.value],
                marker="*",
                s=260,
                color="gold",
                edgecolors="black",
                zorder=5,
                label="best" if ax is axes[0][-1] else None,
            )
        if numeric:
            if min(x.values()) > 0 and max(x.values()) / min(x.values()) >= 20:
                ax.set_xscale("log")
            values = sorted(set(x.values()))
            if len(values) <= 8:  # few values: a tick at each, labelled as typed
                ax.minorticks_off()
                ax.set_xticks(values, [f"{v:g}" for v in values], rotation=20)
        else:
            ax.set_xticks(range(len(categories)), categories, rotation=20)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
        if len(groups) > 1 and len(groups) <= 10 or (best is not None and ax is axes[0][-1]):
            ax.legend(fontsize="small")
    axes[0][0].set_ylabel(summary.metric or "metric")
    failed = len(summary.rows) - len(points)
    title = f"{summary.metric or 'no metric'} ({summary.direction}), {_jobs(len(summary.rows))}"
    if failed:
        title += f"; {failed} without a value (failed or no metric) not shown"
    fig.suptitle(title, fontsize="medium")
    if not points:
        axes[0][0].text(
            0.5,
            0.5,
            "no finished job reported a metric to plot"
            + (f" ({summary.metric})" if summary.metric else ""),
            ha="center",
            va="center",
            transform=axes[0][0].transAxes,
            wrap=True,
        )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- printing


def print_summary(summary: SweepSummary) -> None:
    """Print the ranked table and where the summary files are."""
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    counts = summary.counts()
    title = (
        f"sweep summary: {_jobs(len(summary.rows))} ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + ")"
    )
    if summary.metric:
        title += f", ranked by {summary.metric} ({summary.direction})"
    table = Table(title=escape(title))
    shown = summary.metric_columns[:4]
    for col in ("rank", "best", "job", "status", *summary.swept, *shown, "error"):
        table.add_column(col, justify="right" if col in shown or col in ("rank", "job") else "left")
    for row in summary.rows:
        table.add_row(*[escape(c) for c in _cells(row, summary, shown, error_width=70)])
    console.print(table)
    best = summary.best
    if best is not None:
        console.print(
            f"best: job {best.job.num} ({_job_label(best, summary)}) "
            f"{summary.metric}={_fmt(best.value)} -> {best.job.dir}",
            soft_wrap=True,
            markup=False,
        )
    if summary.direction_note():
        console.print(summary.direction_note(), soft_wrap=True, markup=False, highlight=False)
    for kind in ("md", "csv", "png"):
        if kind in summary.files:
            console.print(f"{kind:>4}: {summary.files[kind]}", soft_wrap=True, markup=False)

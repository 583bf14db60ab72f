"""The data report of the prepare stage: printed, and saved as report.json / report.md, a
token-length histogram (lengths.png) and a spot-check file (spot_check.md)."""

from __future__ import annotations

import atexit
import datetime as _dt
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from framework.data.cleaning import content_hash, example_key
from framework.data.encoding import MASK_CLOSE, MASK_OPEN, render_masked
from framework.data.records import REASONS
from framework.run import Run, atomic_path, write_json

if TYPE_CHECKING:
    from framework.data.prepare import Encoder, Source

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

#: Plots whose drawing waits until training is over (see :func:`defer_plot`).
_pending: list[tuple[str, Callable[[], None]]] = []

#: Cleaning steps in the order they run, with what each line of the report means.
STEPS: dict[str, str] = {
    "normalized": "changed by Unicode normalisation / trim (kept)",
    "dedup": "removed: exact duplicates",
    "near_dedup": "removed: near-duplicates (MinHash)",
    "too_short": "removed: under clean.min_tokens",
    "too_long": "removed: over max_length (too_long=drop)",
    "no_loss_after_truncation": "removed: no answer left within max_length",
    "truncated": "over max_length, cut in training (kept)",
    "max_samples": "removed: over a source's max_samples",
}


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """``count``, ``min``, ``mean``, ``p50``, ``p95``, ``max`` of token lengths (``{}`` if none)."""
    import numpy as np

    if not lengths:
        return {"count": 0}
    arr = np.asarray(lengths, dtype=float)
    return {
        "count": len(lengths),
        "min": int(arr.min()),
        "mean": round(float(arr.mean()), 1),
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "max": int(arr.max()),
    }


def build_report(
    fingerprint: str,
    sources: list[Source],
    rejects: list[dict],
    steps: dict[str, int],
    splits: dict[str, list[dict]],
    encoder: Encoder,
) -> dict[str, Any]:
    """Everything the report says, as a JSON-ready dict (written to ``report.json``)."""
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    lengths = split_lengths(splits, encoder)
    every = [n for s in SPLITS for n in lengths[s]]
    return {
        "fingerprint": fingerprint,
        "prepared_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "objective": encoder.objective,
        "max_length": encoder.max_length,
        "sources": [
            {
                "name": s.name,
                "format": s.format,
                "files": [str(f) for f in s.files],
                "split": s.split,
                "weight": s.weight,
                "max_samples": s.max_samples,
                **s.stats,
            }
            for s in sources
        ],
        "loaded": sum(s.stats.get("loaded", 0) for s in sources),
        "rejected_total": len(rejects),
        "rejected": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
        "cleaning": {k: steps.get(k, 0) for k in STEPS},
        "splits": {
            s: {"examples": len(splits[s]), "file": f"{s}.jsonl", "sha256": content_hash(splits[s])}
            for s in SPLITS
        },
        "tokens": {
            "all": length_stats(every),
            **{s: length_stats(lengths[s]) for s in SPLITS},
            "over_max_length": sum(n > encoder.max_length for n in every),
        },
        "files": {
            "rejects": "rejects.jsonl",
            "removed": "removed.jsonl",
            "spot_check": "spot_check.md",
            "histogram": "lengths.png",
        },
    }


# ----------------------------------------------------------------------------- printing


def _rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines of the summary table: ``(what, count)``."""
    rows = [("records loaded", str(report["loaded"]))]
    rows.append(("rejected (rejects.jsonl)", str(report["rejected_total"])))
    rows += [(f"  rejected: {reason}", str(n)) for reason, n in report["rejected"].items()]
    rows += [(STEPS[k], str(n)) for k, n in report["cleaning"].items()]
    rows += [(f"split: {s}", str(report["splits"][s]["examples"])) for s in SPLITS]
    return rows


def _token_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in ("all", *SPLITS):
        st = report["tokens"][name]
        if st.get("count"):
            rows.append(
                [name, *(str(st[k]) for k in ("count", "min", "mean", "p50", "p95", "max"))]
            )
    return rows


def print_report(report: dict[str, Any]) -> None:
    """Print the report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = "data report" + (" (reused: same inputs and config)" if report.get("reused") else "")
    table = Table(title=title)
    table.add_column("step")
    table.add_column("examples", justify="right")
    for what, n in _rows(report):
        table.add_row(what, n)
    console.print(table)
    if len(report["sources"]) > 1:
        src = Table(title="sources")
        for col in ("source", "format", "loaded", "rejected", "kept", "train", "val", "test"):
            src.add_column(col, justify="left" if col in ("source", "format") else "right")
        for s in report["sources"]:
            src.add_row(
                s["name"],
                s["format"],
                *(str(s.get(k, "")) for k in ("loaded", "rejected", "kept", *SPLITS)),
            )
        console.print(src)
    tokens = Table(title=f"tokens per example (max_length {report['max_length']})")
    for col in ("split", "count", "min", "mean", "p50", "p95", "max"):
        tokens.add_column(col, justify="left" if col == "split" else "right")
    for row in _token_rows(report):
        tokens.add_row(*row)
    console.print(tokens)


# ----------------------------------------------------------------------------- files


def report_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the report for people."""
    lines = [
        "# Data report",
        "",
        f"Objective `{report['objective']}`, max_length {report['max_length']} tokens. "
        f"Fingerprint `{report['fingerprint']}`, prepared {report['prepared_at']}.",
        "",
        "| step | examples |",
        "| --- | ---: |",
        *(f"| {what.strip()} | {n} |" for what, n in _rows(report)),
        "",
        "## Sources",
        "",
        "| source | format | files | loaded | rejected | kept | train | val | test |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report["sources"]:
        files = "<br>".join(f"`{f}`" for f in s["files"][:5]) + (
            f"<br>… {len(s['files']) - 5} more" if len(s["files"]) > 5 else ""
        )
        lines.append(
            f"| {s['name']} | {s['format']} | {files} | "
            + " | ".join(str(s.get(k, "")) for k in ("loaded", "rejected", "kept", *SPLITS))
            + " |"
        )
    lines += [
        "",
        "## Splits",
        "",
        "| split | examples | content sha256 |",
        "| --- | ---: | --- |",
        *(
            f"| {s} | {report['splits'][s]['examples']} | `{report['splits'][s]['sha256']}` |"
            for s in SPLITS
        ),
        "",
        "The hash covers the examples' content in order (not their `_source` paths): the same "
        "inputs and config give the same hash on any machine.",
        "",
        "## Tokens per example",
        "",
        "| split | count | min | mean | p50 | p95 | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *("| " + " | ".join(r) + " |" for r in _token_rows(report)),
        "",
        f"{report['tokens']['over_max_length']} examples are longer than max_length. "
        "Histogram: [lengths.png](lengths.png).",
        "",
    ]
    if report["rejected"]:
        lines += ["## Rejection reasons", ""]
        lines += [f"- `{r}` ({n}): {REASONS.get(r, '')}" for r, n in report["rejected"].items()]
        lines += ["", "Each rejected record is in `rejects.jsonl` with its `file:line`.", ""]
    lines += [
        "Removed examples are in `removed.jsonl`; "
        "[spot_check.md](spot_check.md) shows training examples as the model sees them.",
        "",
    ]
    return "\n".join(lines)


def plot_lengths(report: dict[str, Any], lengths: dict[str, list[int]], path: Any) -> None:
    """Write the token-length histogram (one colour per split, max_length marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    data = [lengths[s] for s in SPLITS if lengths[s]]
    labels = [s for s in SPLITS if lengths[s]]
    if data:
        ax.hist(data, bins=40, stacked=True, label=labels)
    ax.axvline(report["max_length"], color="black", linestyle="--", label="max_length")
    ax.set_xlabel("tokens per example (before truncation)")
    ax.set_ylabel("examples")
    ax.set_title(f"token lengths ({report['objective']})")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def spot_check_markdown(splits: dict[str, list[dict]], encoder: Encoder, n: int, seed: int) -> str:
    """``spot_check.md``: ``n`` random training examples as the model sees them."""
    unique = {example_key(e): e for e in splits["train"]}
    chosen = random.Random(seed).sample(sorted(unique), min(n, len(unique)))
    lines = [
        "# Spot check",
        "",
        f"{len(chosen)} random training examples, exactly as the model sees them: the chat "
        f"template applied, cut to max_length={encoder.max_length} tokens. Text inside "
        f"{MASK_OPEN} {MASK_CLOSE} carries no loss (the model reads it but is not trained to "
        "write it); everything else is learned.",
        "",
    ]
    for i, key in enumerate(chosen, start=1):
        example = unique[key]
        enc = encoder.training_encoding(example)
        ids, labels = [int(t) for t in enc["input_ids"]], [int(t) for t in enc["labels"]]
        full, _ = encoder.measure(example)
        learned = sum(lab != -100 for lab in labels)
        cut = f", cut from {full}" if full > len(ids) else ""
        lines += [
            f"## {i}. {example.get('_source')}",
            "",
            f"{len(ids)} tokens{cut}; {learned} learned.",
            "",
            "````text",
            render_masked(encoder.tokenizer, ids, labels),
            "````",
            "",
        ]
    return "\n".join(lines)


def split_lengths(splits: dict[str, list[dict]], encoder: Encoder) -> dict[str, list[int]]:
    """Tokens per example (before truncation), per split."""
    return {s: [encoder.measure(e)[0] for e in splits[s]] for s in SPLITS}


def defer_plot(what: str, draw: Callable[[], None]) -> None:
    """Draw a plot later: when :func:`draw_pending_plots` is called (the train stage does,
    after training), or when the process exits, whichever comes first.

    Drawing means importing matplotlib (about half a CPU-second): done before training, it
    would delay the first optimizer step for a picture nobody reads until the run ends.
    """
    if not _pending:
        atexit.register(draw_pending_plots)
    _pending.append((what, draw))


def draw_pending_plots() -> None:
    """Draw every plot :func:`defer_plot` holds (a plot that fails only logs a warning)."""
    while _pending:
        what, draw = _pending.pop(0)
        try:
            draw()
        except Exception as exc:  # a picture must never fail a run
            log.warning("could not draw %s: %s", what, exc)


def write_report_files(
    run: Run,
    report: dict[str, Any],
    splits: dict[str, list[dict]],
    encoder: Encoder,
    seed: int,
    plot: bool = True,
) -> None:
    """Write spot_check.md, lengths.png (unless not ``plot``), report.md and (last)
    report.json into ``data/``."""
    n = int(run.cfg.data.get("spot_check", 8) or 0)
    text = spot_check_markdown(splits, encoder, n, seed)
    with atomic_path(run.data_dir / "spot_check.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    if plot:
        plot_lengths(report, split_lengths(splits, encoder), run.data_dir / "lengths.png")
    with atomic_path(run.data_dir / "report.md") as tmp:
        tmp.write_text(report_markdown(report), encoding="utf-8")
    write_json(run.data_dir / "report.json", report)

"""What a person reads after an evaluation: the printed table and ``eval_report.md``."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework.descriptors import Note
from framework.run import atomic_path

#: The key of ``metrics.json`` with each metric's direction: ``{key: "higher" | "lower" |
#: null}`` (what the metric's plugin declared; null: none declared).
DIRECTIONS = "directions"
#: The key of ``metrics.json`` with standard errors, when a metric gave any:
#: ``{side: {key: value}}``.
STDERR = "stderr"
#: The sides of an evaluation, in the order the table shows them.
SIDES = ("base", "tuned")


def _fmt(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}" if stderr is None else f"{value:.4g} ± {stderr:.2g}"


def change_text(base: float | None, tuned: float | None, direction: str | None) -> str:
    """The change from base to tuned: ``"+0.12 (better)"`` when the metric has a direction
    (``higher`` or ``lower`` is better), just ``"+0.12"`` when it has none."""
    if base is None or tuned is None or math.isnan(base) or math.isnan(tuned):
        return ""
    delta = tuned - base
    if delta == 0:
        return "0"
    if direction not in ("higher", "lower"):
        return f"{delta:+.4g}"
    better = delta > 0 if direction == "higher" else delta < 0
    return f"{delta:+.4g} ({'better' if better else 'worse'})"


def metric_names(results: dict[str, Any]) -> list[str]:
    """Every metric either side reported (tuned's order first)."""
    return list(dict.fromkeys([*results.get("tuned", {}), *results.get("base", {})]))


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(metric, base, tuned, change)`` for each metric of either side.

    Args:
        results: what ``metrics.json`` holds: ``base`` and ``tuned`` (``{key: value}``),
            :data:`DIRECTIONS` and, when known, :data:`STDERR`.
    """
    base, tuned = results.get("base", {}), results.get("tuned", {})
    directions = results.get(DIRECTIONS) or {}
    stderr = results.get(STDERR) or {}
    b_err, t_err = stderr.get("base", {}), stderr.get("tuned", {})
    return [
        (
            n,
            _fmt(base.get(n), b_err.get(n)),
            _fmt(tuned.get(n), t_err.get(n)),
            change_text(base.get(n), tuned.get(n), directions.get(n)),
        )
        for n in metric_names(results)
    ]


def directions_text(results: dict[str, Any]) -> str:
    """One sentence: which metrics are better higher, which lower, which have no direction."""
    directions = results.get(DIRECTIONS) or {}
    groups: dict[str | None, list[str]] = {"higher": [], "lower": [], None: []}
    for name in metric_names(results):
        direction = directions.get(name)
        groups[direction if direction in groups else None].append(name)
    parts = [
        f"{word} is better for {', '.join(groups[key])}"
        for key, word in (("higher", "higher"), ("lower", "lower"))
        if groups[key]
    ]
    text = "; ".join(parts)
    text = text[:1].upper() + text[1:] + "." if text else ""
    if groups[None]:
        undeclared = ", ".join(groups[None])
        text += (
            f"{' ' if text else ''}No direction is declared for {undeclared}: "
            "its change is shown without better or worse."
        )
    return text


def print_table(results: dict[str, Any], title: str = "evaluation") -> None:
    """Print metric | base | tuned | change, and which direction is better for each metric."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("metric", "base", "tuned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in table_rows(results):
        table.add_row(*row)
    console = Console()
    console.print(table)
    note = directions_text(results)
    if note:
        console.print(note, soft_wrap=True, markup=False, highlight=False)


def collect_notes(
    hook: Any, results: dict[str, Any], rows: list[dict], cfg: DictConfig
) -> list[Note]:
    """Every plugin's ``tunesmith_report_notes``, warnings first (a string is an info note).

    Args:
        hook: the plugin manager's hook relay (``run.hook``).
        results: what ``metrics.json`` holds.
        rows: the scored examples with each side's answer (``predictions.jsonl``).
        cfg: the run config.
    """
    notes: list[Note] = []
    for returned in hook.tunesmith_report_notes(results=results, rows=rows, cfg=cfg):
        for note in returned or []:
            notes.append(note if isinstance(note, Note) else Note(str(note), level="info"))
    return sorted(notes, key=lambda n: n.level != "warning")


def note_heading(note: Note) -> str:
    """``"Warning: <title>"`` / ``"Note: <title>"`` (the title may be empty)."""
    word = "Warning" if note.level == "warning" else "Note"
    return f"{word}: {note.title}" if note.title else word


def print_notes(notes: list[Note]) -> None:
    """Print each note under the table: warnings in yellow, so they are not missed."""
    if not notes:
        return
    from rich.console import Console

    console = Console()
    for note in notes:
        style = "bold yellow" if note.level == "warning" else "bold"
        console.print()
        console.print(note_heading(note), style=style, markup=False, highlight=False)
        console.print(note.text, soft_wrap=True, markup=False, highlight=False)


def markdown_notes(notes: list[Note]) -> list[str]:
    """The notes as Markdown lines (a quoted block each)."""
    lines: list[str] = []
    for note in notes:
        icon = "⚠️ " if note.level == "warning" else ""
        lines.append(f"> **{icon}{note_heading(note)}**")
        lines.append(">")
        lines += [f"> {line}".rstrip() for line in note.text.splitlines()]
        lines.append("")
    return lines


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = ["| metric | base | tuned | change |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(r)} |" for r in table_rows(results)]
    return "\n".join(lines)


def example_scores(rows: list[dict]) -> list[dict]:
    """Rows with both sides, each with its per-example chrF and the change (tuned - base)."""
    from framework.evaluate.text import chrf

    out = []
    for row in rows:
        if "base" in row and "tuned" in row:
            b, t = chrf(row["base"], row["reference"]), chrf(row["tuned"], row["reference"])
            out.append({**row, "base_chrf": b, "tuned_chrf": t, "delta": t - b})
    return out


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}\n{text}\n{ticks}"


def _prompt_text(row: dict) -> str:
    messages = row.get("messages")
    if not messages:
        return row.get("prompt", "")
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)


def _example_md(k: int, row: dict) -> str:
    head = (
        f"### {k}. {row.get('source') or row['id']} "
        f"(chrF {row['base_chrf']:.1f} → {row['tuned_chrf']:.1f})"
    )
    parts = [head, "", "**Prompt**", "", _fence(_prompt_text(row)), ""]
    for label, key in (("Reference", "reference"), ("Base", "base"), ("Tuned", "tuned")):
        parts += [f"**{label}**", "", _fence(row[key]), ""]
    return "\n".join(parts)


def write_report(
    path: Path,
    results: dict[str, Any],
    rows: list[dict],
    cfg: DictConfig,
    info: dict[str, Any],
    notes: list[Note] | None = None,
    sections: Sequence[str] = (),
) -> Path:
    """Write ``eval_report.md``: the table (with each metric's declared direction), the
    plugins' notes (:func:`collect_notes`), then the examples that improved and got worse.

    ``sections`` (Markdown from the ``tunesmith_report_sections`` hook) follow the table.

    Examples are ranked by the change of their chrF (character n-gram F-score against the
    reference, 0-100, fair to English and Chinese alike); ``evaluator.report_examples``
    of each kind are shown.
    """
    n_show = int(cfg.evaluator.get("report_examples", 5))
    split = cfg.evaluator.get("split", "test")
    lines = [
        "# Evaluation report",
        "",
        f"- model: `{cfg.model.name}` · method: `{cfg.method.name}` · data: `{cfg.data.name}`",
        f"- {info.get('examples')} examples of the {split} split",
        f"- tuned model: {info.get('tuned')}",
        f"- base model: {info.get('base')}",
        "- generation: "
        + (
            f"sampling (temperature {cfg.evaluator.get('temperature')}, "
            f"top_p {cfg.evaluator.get('top_p')})"
            if cfg.evaluator.get("do_sample")
            else "greedy"
        )
        + f", at most {info.get('max_new_tokens') or cfg.evaluator.get('max_new_tokens')} new "
        + (
            "tokens"
            if cfg.evaluator.get("max_new_tokens")
            else "tokens (sized from the references)"
        ),
        "",
        markdown_table(results),
        "",
        directions_text(results),
        "",
        *markdown_notes(notes or []),
    ]
    for section in sections:
        lines += [section.rstrip(), ""]
    scored = example_scores(rows)
    if scored:
        improved = sorted((r for r in scored if r["delta"] > 0), key=lambda r: -r["delta"])
        worse = sorted((r for r in scored if r["delta"] < 0), key=lambda r: r["delta"])
        same = len(scored) - len(improved) - len(worse)
        lines += [
            f"Per example (chrF against the reference, 0-100): {len(improved)} improved, "
            f"{len(worse)} got worse, {same} unchanged.",
            "",
        ]
        for title, chosen in (
            ("Examples that improved", improved),
            ("Examples that got worse", worse),
        ):
            lines += [f"## {title}", ""]
            if not chosen:
                lines += ["None.", ""]
            for k, row in enumerate(chosen[:n_show], 1):
                lines.append(_example_md(k, row))
    else:
        lines += ["(No per-example comparison: only one side generated answers.)", ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path

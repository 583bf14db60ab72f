"""What a person reads after an evaluation: the printed table and ``eval_report.md``."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework.run import atomic_path

#: Metrics where a smaller value is the better one.
LOWER_IS_BETTER = {"perplexity", "loss"}


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def change_text(name: str, base: float | None, tuned: float | None) -> str:
    """``"+0.12 (better)"``: the change from base to tuned, and whether it is an improvement."""
    if base is None or tuned is None or math.isnan(base) or math.isnan(tuned):
        return ""
    delta = tuned - base
    if delta == 0:
        return "0"
    better = (delta < 0) if name in LOWER_IS_BETTER else (delta > 0)
    return f"{delta:+.4g} ({'better' if better else 'worse'})"


def table_rows(results: dict[str, dict[str, float]]) -> list[tuple[str, str, str, str]]:
    """``(metric, base, tuned, change)`` for each metric of either side."""
    base, tuned = results.get("base", {}), results.get("tuned", {})
    names = list(dict.fromkeys([*tuned, *base]))
    return [
        (n, _fmt(base.get(n)), _fmt(tuned.get(n)), change_text(n, base.get(n), tuned.get(n)))
        for n in names
    ]


def print_table(results: dict[str, dict[str, float]], title: str = "evaluation") -> None:
    """Print metric | base | tuned | change."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("metric", "base", "tuned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in table_rows(results):
        table.add_row(*row)
    Console().print(table)


def markdown_table(results: dict[str, dict[str, float]]) -> str:
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
    results: dict[str, dict[str, float]],
    rows: list[dict],
    cfg: DictConfig,
    info: dict[str, Any],
    sections: Sequence[str] = (),
) -> Path:
    """Write ``eval_report.md``: the table, then the examples that improved and got worse.

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
        + f", at most {cfg.evaluator.get('max_new_tokens')} new tokens",
        "",
        markdown_table(results),
        "",
        "Lower is better for perplexity; higher is better for every other metric. "
        "BLEU and chrF are on a 0-100 scale, the others on 0-1.",
        "",
    ]
    for section in sections:
        lines += [section.rstrip(), ""]
    scored = example_scores(rows)
    if scored:
        improved = sorted((r for r in scored if r["delta"] > 0), key=lambda r: -r["delta"])
        worse = sorted((r for r in scored if r["delta"] < 0), key=lambda r: r["delta"])
        same = len(scored) - len(improved) - len(worse)
        lines += [
            f"Per example (chrF against the reference): {len(improved)} improved, "
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

"""The predictions browser: rows of ``predictions.jsonl``, right/wrong per metric, search, diff.

Right/wrong needs a per-example verdict. The metrics that have one are scored here with the
in-tree metric plugins' own functions and the run's own options (``evaluator.exact_match``,
``evaluator.choices`` / ``answer_pattern``), so the verdicts agree with the numbers in
``metrics.json``. Metrics with no per-example yes/no (BLEU, ROUGE, perplexity) are not offered.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugins.board.files import read_jsonl
from plugins.board.runs import select

#: Rows per page of the browser.
PAGE_SIZE = 50


def merged_rows(path: Path) -> list[dict]:
    """One row per example (an unfinished evaluation writes a row per side and batch);
    broken lines are skipped."""
    merged: dict[Any, dict] = {}
    for row in read_jsonl(path):
        merged.setdefault(row.get("id") or row.get("prompt"), {}).update(row)
    return list(merged.values())


def prompt_text(row: dict) -> str:
    """The prompt as a person reads it (the conversation's messages, not the template)."""
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        if len(messages) == 1 and isinstance(messages[0], dict):
            return str(messages[0].get("content", ""))
        return "\n\n".join(
            f"[{m.get('role')}] {m.get('content')}" for m in messages if isinstance(m, dict)
        )
    return str(row.get("prompt", ""))


def checkers(cfg: dict[str, Any]) -> dict[str, Callable[[str, str], bool]]:
    """``{metric: is_right(answer, reference)}`` for the run's metrics that judge one example."""
    from plugins.metrics.scoring import answer_accuracy, normalize

    evaluator = cfg.get("evaluator") if isinstance(cfg.get("evaluator"), dict) else {}
    metrics = [str(m) for m in evaluator.get("metrics") or []]
    out: dict[str, Callable[[str, str], bool]] = {}
    if "exact_match" in metrics:
        opts = {k: bool(v) for k, v in (select(cfg, "evaluator.exact_match") or {}).items()}
        out["exact_match"] = lambda p, r: normalize(p, **opts) == normalize(r, **opts)
    if "accuracy" in metrics:
        choices = [str(c) for c in evaluator.get("choices") or []] or None
        pattern = evaluator.get("answer_pattern")
        pattern = str(pattern) if pattern else None
        out["accuracy"] = lambda p, r: answer_accuracy([p], [r], choices, pattern) == 1.0
    return out


def diff_segments(answer: str, reference: str) -> list[list[str]]:
    """``answer`` cut into ``[["same"|"added", text]]`` against ``reference`` (word level)."""
    a = re.findall(r"\s+|\w+|[^\w\s]", answer or "")
    b = re.findall(r"\s+|\w+|[^\w\s]", reference or "")
    out: list[list[str]] = []
    matcher = difflib.SequenceMatcher(a=b, b=a, autojunk=False)
    for op, _i1, _i2, j1, j2 in matcher.get_opcodes():
        if j1 == j2:
            continue
        kind = "same" if op == "equal" else "added"
        text = "".join(a[j1:j2])
        if out and out[-1][0] == kind:
            out[-1][1] += text
        else:
            out.append([kind, text])
    return out


def browse(
    path: Path,
    cfg: dict[str, Any],
    query: str = "",
    metric: str = "",
    side: str = "tuned",
    verdict: str = "",
    page: int = 1,
) -> dict[str, Any]:
    """One page of predictions, filtered.

    Args:
        path: ``predictions.jsonl``.
        cfg: the run's config (for the metrics and their options).
        query: keep rows whose prompt, reference or answers contain it (case-insensitive).
        metric: with ``verdict``: judge rows by this metric.
        side: the answer judged (``base`` or ``tuned``).
        verdict: ``right`` or ``wrong`` (empty: all rows).
        page: 1-based page number.
    """
    rows = merged_rows(path)
    judges = checkers(cfg)
    sides = [s for s in ("base", "tuned") if any(s in r for r in rows)]
    items = []
    for row in rows:
        reference = str(row.get("reference", ""))
        item = {
            "id": row.get("id"),
            "source": row.get("source"),
            "prompt": prompt_text(row),
            "reference": reference,
            "answers": {},
        }
        for s in sides:
            if s not in row:
                continue
            answer = str(row[s])
            item["answers"][s] = {
                "text": answer,
                "diff": diff_segments(answer, reference),
                "verdicts": {m: fn(answer, reference) for m, fn in judges.items()},
            }
        items.append(item)
    if query:
        q = query.lower()
        items = [
            it
            for it in items
            if q in it["prompt"].lower()
            or q in it["reference"].lower()
            or any(q in a["text"].lower() for a in it["answers"].values())
        ]
    if metric and verdict in ("right", "wrong") and metric in judges:
        want = verdict == "right"
        items = [
            it
            for it in items
            if side in it["answers"] and it["answers"][side]["verdicts"].get(metric) is want
        ]
    total = len(items)
    page = max(1, int(page))
    start = (page - 1) * PAGE_SIZE
    return {
        "total": total,
        "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "sides": sides,
        "metrics": sorted(judges),
        "items": items[start : start + PAGE_SIZE],
    }

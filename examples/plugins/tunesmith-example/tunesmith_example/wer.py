"""Word error rate (``wer``): a metric where lower is better, and says so.

WER is the number of word substitutions, deletions and insertions that turn the answer into
the reference, divided by the reference's word count (0 is perfect; it can exceed 1). Words
are the whitespace-separated tokens. Registered by its own entry point (``example_wer``);
declaring ``higher_is_better=False`` is all it takes for tunesmith's table, reports and
sweep rankings to treat a drop as an improvement.
"""

from __future__ import annotations

from typing import Any

from framework import Metric, Score, hookimpl


def edit_distance(a: list[str], b: list[str]) -> int:
    """The Levenshtein distance between two word lists."""
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1]


def wer(predictions: list[str], references: list[str]) -> float:
    """Corpus WER: all word edits over all reference words (``nan`` without references)."""
    pairs = list(zip(predictions, references, strict=True))
    words = sum(len(r.split()) for _, r in pairs)
    if not pairs:
        return float("nan")
    edits = sum(edit_distance(p.split(), r.split()) for p, r in pairs)
    return edits / words if words else float(edits > 0)


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric(
            "wer",
            higher_is_better=False,
            needs=("generations",),
            description="word error rate of the answers (0 is perfect)",
        )
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: Any) -> dict[str, Score] | None:
    if "wer" not in metrics:
        return None
    return {"wer": Score(wer(ctx.generations(), ctx.references()))}

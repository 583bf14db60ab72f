"""``perplexity``: exp of the mean token cross-entropy over the answers (teacher-forced)."""

from __future__ import annotations

from framework import Metric, hookimpl
from framework.evaluate.context import EvalContext


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric(
            "perplexity",
            higher_is_better=False,
            needs=("token_stats",),
            description="exp of the mean answer-token cross-entropy (>= 1, teacher-forced)",
        )
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    if "perplexity" not in metrics:
        return None
    return {"perplexity": ctx.token_stats().perplexity}

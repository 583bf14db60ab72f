"""``perplexity``: exp of the mean token cross-entropy over the answers (teacher-forced)."""

from __future__ import annotations

from framework import hookimpl
from framework.evaluate.context import EvalContext


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"metric": ["perplexity"]}


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    if "perplexity" not in metrics:
        return None
    return {"perplexity": ctx.token_stats().perplexity}

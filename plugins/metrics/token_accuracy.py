"""``token_accuracy``: share of answer tokens the model ranks first, given the true prefix.

Teacher-forced like perplexity (no generation), over the assistant turns only.
"""

from __future__ import annotations

from framework import Metric, hookimpl
from framework.evaluate.context import EvalContext


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric(
            "token_accuracy",
            needs=("token_stats",),
            description="share of answer tokens ranked first given the true prefix (0-1)",
        )
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    if "token_accuracy" not in metrics:
        return None
    return {"token_accuracy": ctx.token_stats().accuracy}

"""``accuracy``: classification / multiple choice scored on the generated answers.

The answer is extracted from the generation (``evaluator.answer_pattern``, a regex whose
first group is the answer; and/or the choice named first among ``evaluator.choices``) and
compared with the reference label, case, punctuation and width folded.
"""

from __future__ import annotations

from framework import Metric, hookimpl
from framework.evaluate.context import EvalContext
from plugins.metrics.scoring import answer_accuracy


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric(
            "accuracy",
            needs=("generations",),
            description="the label extracted from the answer equals the reference's (0-1)",
        )
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    if "accuracy" not in metrics:
        return None
    choices = [str(c) for c in (ctx.evaluator.get("choices") or [])] or None
    pattern = ctx.evaluator.get("answer_pattern")
    return {
        "accuracy": answer_accuracy(
            ctx.generations(), ctx.references(), choices, str(pattern) if pattern else None
        )
    }

"""``choice_accuracy``: classification / multiple choice by log-likelihood, no generation.

Each choice is scored as the answer given the prompt; the most likely one is the model's
pick. ``evaluator.choice_norm``: ``sum`` (total log-probability) or ``mean`` (per token,
fairer to choices of different lengths). Choices come from the example's ``choices`` field,
``evaluator.choices``, or the distinct references.
"""

from __future__ import annotations

from framework import Metric, hookimpl
from framework.errors import ConfigError
from framework.evaluate.context import EvalContext
from plugins.metrics.scoring import normalize


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric(
            "choice_accuracy",
            needs=("choices", "model"),
            description="the likeliest choice (log-likelihood) is the reference (0-1)",
        )
    ]


def pick(scores: list[tuple[float, int]], norm: str) -> int:
    """Index of the best choice given ``(log-likelihood, tokens)`` pairs."""
    if norm == "mean":
        return max(range(len(scores)), key=lambda i: scores[i][0] / max(scores[i][1], 1))
    return max(range(len(scores)), key=lambda i: scores[i][0])


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    if "choice_accuracy" not in metrics:
        return None
    norm = str(ctx.evaluator.get("choice_norm", "sum"))
    if norm not in ("sum", "mean"):
        raise ConfigError(
            f"Unknown evaluator.choice_norm '{norm}'.",
            where="evaluator.choice_norm",
            hint="sum | mean",
        )
    choices = ctx.choices()
    hits = 0
    for opts, scores, ref in zip(choices, ctx.choice_logliks(), ctx.references(), strict=True):
        got = opts[pick(scores, norm)]
        hits += normalize(got, True, True) == normalize(ref, True, True)
    return {"choice_accuracy": hits / len(choices) if choices else float("nan")}

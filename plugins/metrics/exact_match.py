"""``exact_match``: share of generated answers equal to the reference after normalisation.

Normalisation (``evaluator.exact_match.*``): Unicode NFKC and surrounding whitespace
(always), ``lowercase``, ``strip_punctuation`` (every script: ``,`` and ``，``),
``collapse_whitespace``.
"""

from __future__ import annotations

from framework import Metric, hookimpl
from framework.evaluate.context import EvalContext
from plugins.metrics.scoring import exact_match, normalize

__all__ = ["exact_match", "normalize"]


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric(
            "exact_match",
            needs=("generations",),
            description="the answer equals the reference after normalisation (0-1)",
        )
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    if "exact_match" not in metrics:
        return None
    opts = {k: bool(v) for k, v in (ctx.evaluator.get("exact_match") or {}).items()}
    return {"exact_match": exact_match(ctx.generations(), ctx.references(), **opts)}

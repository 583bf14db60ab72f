"""``bleu``: corpus BLEU (0-100) by sacrebleu on the generated answers.

``evaluator.bleu.tokenize``: ``auto`` (``zh`` when the references are Chinese, else ``13a``),
or any sacrebleu tokenizer (``13a``, ``zh``, ``intl``, ``char``, ``none``);
``evaluator.bleu.lowercase``.
"""

from __future__ import annotations

from framework import Metric, hookimpl
from framework.evaluate.context import EvalContext
from plugins.metrics.scoring import bleu, bleu_tokenizer


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric(
            "bleu",
            needs=("generations",),
            description="corpus BLEU of the answers by sacrebleu (0-100)",
        )
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    if "bleu" not in metrics:
        return None
    opts = ctx.evaluator.get("bleu") or {}
    tokenize = bleu_tokenizer(opts.get("tokenize", "auto"), ctx.language())
    value = bleu(
        ctx.generations(),
        ctx.references(),
        tokenize=tokenize,
        lowercase=bool(opts.get("lowercase", False)),
    )
    return {"bleu": value}

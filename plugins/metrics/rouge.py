"""``rouge``: ROUGE-1/2/L F-measures (0-1) by rouge-score on the generated answers.

Selecting ``rouge`` reports ``rouge1``, ``rouge2`` and ``rougeL``; each can be selected alone.
``evaluator.rouge.tokenize``: ``auto`` (Chinese characters for Chinese references, else
rouge-score's English tokenizer), ``default``, ``char`` or ``jieba`` (Chinese words);
``evaluator.rouge.use_stemmer`` (English only).
"""

from __future__ import annotations

from framework import Metric, hookimpl
from framework.evaluate.context import EvalContext
from plugins.metrics.scoring import ROUGE_TYPES, rouge, rouge_tokenizer


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric("rouge", description="ROUGE-1/2/L F-measures (0-1), as rouge1, rouge2, rougeL"),
        *[Metric(t, description=f"the {t} F-measure alone (0-1)") for t in ROUGE_TYPES],
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    wanted = ROUGE_TYPES if "rouge" in metrics else [t for t in ROUGE_TYPES if t in metrics]
    if not wanted:
        return None
    opts = ctx.evaluator.get("rouge") or {}
    tokenizer = rouge_tokenizer(opts.get("tokenize", "auto"), ctx.language())
    return rouge(
        ctx.generations(),
        ctx.references(),
        tokenizer=tokenizer,
        use_stemmer=bool(opts.get("use_stemmer", True)),
        types=wanted,
    )

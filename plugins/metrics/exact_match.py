"""``exact_match``: share of generated answers equal to the reference after normalisation.

Normalisation (``evaluator.exact_match.*``): strip surrounding whitespace (always),
``lowercase``, ``strip_punctuation``, ``collapse_whitespace``.
"""

from __future__ import annotations

import re
import string
import unicodedata

from framework import hookimpl
from framework.evaluation import EvalContext

_PUNCT = set(string.punctuation) | {"，", "。", "！", "？", "、", "；", "：", "“", "”", "（", "）"}


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"metric": ["exact_match"]}


def normalize(
    text: str,
    lowercase: bool = False,
    strip_punctuation: bool = False,
    collapse_whitespace: bool = True,
) -> str:
    """Normalise an answer for comparison."""
    text = unicodedata.normalize("NFKC", text).strip()
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = "".join(ch for ch in text if ch not in _PUNCT)
    if collapse_whitespace:
        text = re.sub(r"\s+", " ", text).strip()
    return text


def exact_match(predictions: list[str], references: list[str], **options: bool) -> float:
    """Mean of ``normalize(p) == normalize(r)`` over pairs."""
    if not references:
        return float("nan")
    hits = sum(
        normalize(p, **options) == normalize(r, **options)
        for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(references)


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    if "exact_match" not in metrics:
        return None
    opts = dict(ctx.evaluator.get("exact_match") or {})
    return {"exact_match": exact_match(ctx.generations(), ctx.references(), **opts)}

"""Token F1: the word overlap between a generated answer and its reference.

Unlike exact match it gives partial credit: ``{"name": "Ann", "age": 30}`` against
``{"name": "Ann", "age": 31}`` scores 0.75, not 0. Words are runs of letters and digits;
each CJK character counts as one word, so Chinese answers are scored too.
"""

from __future__ import annotations

import re
from collections import Counter

_WORDS = re.compile(r"[\u4e00-\u9fff]|[^\W\u4e00-\u9fff]+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``."""
    return _WORDS.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the words shared by ``prediction`` and ``reference`` (1.0 when both are empty)."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_token_f1(predictions: list[str], references: list[str]) -> float:
    """The mean :func:`token_f1` over pairs."""
    if not references:
        return float("nan")
    pairs = zip(predictions, references, strict=True)
    return sum(token_f1(p, r) for p, r in pairs) / len(references)

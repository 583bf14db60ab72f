"""Text scoring shared by the in-tree metric plugins: normalisation, language, BLEU, ROUGE, answers.

Pure functions over strings (no torch), so each can be checked against hand-computed values.
Chinese is scored correctly: BLEU uses sacrebleu's ``zh`` tokenizer and ROUGE counts
characters (or jieba words) when the text is Chinese; ``language="auto"`` decides from the
references.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from framework.evaluate.text import CJK_RANGES as _CJK_RANGES
from framework.evaluate.text import has_cjk
from framework.evaluate.text import one_of as _one_of

log = logging.getLogger(__name__)

#: CJK ideographs (unified, extension A, compatibility) -- what makes a text "Chinese" here.
#: One CJK ideograph, or a run of other letters / digits, for the mixed tokenizer.
_MIXED_TOKEN = re.compile(rf"[{_CJK_RANGES}]|[^\W_{_CJK_RANGES}]+")

BLEU_TOKENIZERS = ("auto", "13a", "zh", "intl", "char", "none")
ROUGE_TOKENIZERS = ("auto", "default", "char", "jieba")


# --------------------------------------------------------------------------- normalisation


def is_punctuation(ch: str) -> bool:
    """Whether ``ch`` is punctuation in any script (ASCII, Chinese full-width, ...)."""
    return unicodedata.category(ch).startswith("P")


def normalize(
    text: str,
    lowercase: bool = False,
    strip_punctuation: bool = False,
    collapse_whitespace: bool = True,
) -> str:
    """Normalise an answer for comparison.

    Always applies Unicode NFKC (full-width ``Ａ１，`` become ``A1,``) and trims whitespace.

    Args:
        text: the answer.
        lowercase: compare case-insensitively.
        strip_punctuation: drop punctuation of every script (``,`` and ``，`` alike).
        collapse_whitespace: turn runs of whitespace into one space.
    """
    text = unicodedata.normalize("NFKC", text).strip()
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = "".join(ch for ch in text if not is_punctuation(ch))
    if collapse_whitespace:
        text = re.sub(r"\s+", " ", text).strip()
    return text


def exact_match(predictions: Sequence[str], references: Sequence[str], **options: bool) -> float:
    """Share of ``normalize(p) == normalize(r)`` over pairs (``options`` go to normalize)."""
    if not references:
        return float("nan")
    hits = sum(
        normalize(p, **options) == normalize(r, **options)
        for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(references)


# --------------------------------------------------------------------------- language


# --------------------------------------------------------------------------- BLEU


def bleu_tokenizer(setting: str, language: str) -> str:
    """The sacrebleu tokenizer for ``evaluator.bleu.tokenize`` (``auto``: by language)."""
    setting = _one_of(
        setting,
        BLEU_TOKENIZERS,
        "BLEU tokenizer",
        "evaluator.bleu.tokenize",
        " (auto: zh for Chinese, else 13a)",
    )
    if setting == "auto":
        return "zh" if language == "zh" else "13a"
    return setting


def bleu(
    predictions: Sequence[str], references: Sequence[str], tokenize: str = "13a", **kwargs: Any
) -> float:
    """Corpus BLEU (0-100) by sacrebleu, one reference per prediction.

    Args:
        predictions: the generated answers.
        references: the reference answers, in the same order.
        tokenize: a sacrebleu tokenizer name (``13a``, ``zh``, ``intl``, ``char``, ``none``).
        **kwargs: other ``sacrebleu.BLEU`` options (``lowercase``, ``smooth_method``...).
    """
    from sacrebleu.metrics import BLEU

    if not references:
        return float("nan")
    metric = BLEU(tokenize=tokenize, **kwargs)
    return float(metric.corpus_score(list(predictions), [list(references)]).score)


# --------------------------------------------------------------------------- ROUGE


class MixedTokenizer:
    """Tokens for ROUGE on Chinese and mixed text: each CJK character (or jieba word) is a token,
    and each run of Latin letters/digits is a lower-cased word.

    Args:
        unit: ``char`` (one token per Chinese character) or ``jieba`` (jieba's words).
    """

    def __init__(self, unit: str = "char") -> None:
        self.unit = unit

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        if self.unit == "jieba":
            out: list[str] = []
            for word in _jieba().cut(text):
                word = word.strip()
                if word and not all(is_punctuation(c) or c.isspace() for c in word):
                    out.extend(_MIXED_TOKEN.findall(word) if not has_cjk(word) else [word])
            return out
        return _MIXED_TOKEN.findall(text)


@lru_cache(maxsize=1)
def _jieba() -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def rouge_tokenizer(setting: str, language: str) -> Any:
    """A rouge-score tokenizer for ``evaluator.rouge.tokenize``; ``None`` is rouge-score's own.

    ``auto`` picks rouge-score's English tokenizer for English (whose ``[a-z0-9]`` filter
    would drop every Chinese character) and characters for Chinese.
    """
    setting = _one_of(
        setting,
        ROUGE_TOKENIZERS,
        "ROUGE tokenizer",
        "evaluator.rouge.tokenize",
        " (auto: char for Chinese, else default)",
    )
    if setting == "auto":
        setting = "char" if language == "zh" else "default"
    if setting == "default":
        return None
    return MixedTokenizer(setting)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(
    predictions: Sequence[str],
    references: Sequence[str],
    tokenizer: Any = None,
    use_stemmer: bool = True,
    types: Sequence[str] = ROUGE_TYPES,
) -> dict[str, float]:
    """Mean ROUGE F-measures (0-1) over pairs, by rouge-score.

    Args:
        predictions: the generated answers.
        references: the reference answers.
        tokenizer: an object with ``tokenize(text) -> list[str]``; ``None`` uses rouge-score's
            English tokenizer (with the Porter stemmer when ``use_stemmer``).
        use_stemmer: stem English words (only with the default tokenizer).
        types: the ROUGE variants.

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``.
    """
    if not references:
        return {t: float("nan") for t in types}
    scorer = rouge_scorer_for(tuple(types), tokenizer, use_stemmer)
    sums = dict.fromkeys(types, 0.0)
    for p, r in zip(predictions, references, strict=True):
        scores = scorer.score(r, p)
        for t in types:
            sums[t] += scores[t].fmeasure
    return {t: sums[t] / len(references) for t in types}


def rouge_scorer_for(types: tuple[str, ...], tokenizer: Any, use_stemmer: bool) -> Any:
    """A ``rouge_score.rouge_scorer.RougeScorer``."""
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs each scorer it makes
    return rouge_scorer.RougeScorer(
        list(types), use_stemmer=use_stemmer and tokenizer is None, tokenizer=tokenizer
    )


# --------------------------------------------------------------------------- answers


def _choice_regex(choice: str) -> re.Pattern:
    """A pattern finding ``choice`` as a whole word (Latin) or as a substring (CJK)."""
    body = re.escape(choice)
    if has_cjk(choice):
        return re.compile(body)
    return re.compile(rf"(?<![^\W_]){body}(?![^\W_])")


def extract_answer(
    text: str, choices: Sequence[str] | None = None, pattern: str | None = None
) -> str:
    """The answer a model gave, out of its free text.

    1. With ``pattern`` (a regex), the first match is kept: its first group if it has one.
    2. With ``choices``, the choice named earliest in the text wins (case-insensitive; a
       single-letter choice such as ``B`` must stand alone, as in ``(B)`` or ``Answer: B``).
       An exact (normalised) match of the whole text wins over everything.
    3. Otherwise the first non-empty line, without trailing punctuation.

    Returns:
        The extracted answer; ``""`` when nothing usable was found.
    """
    text = unicodedata.normalize("NFKC", text or "").strip()
    if pattern:
        m = re.search(pattern, text, flags=re.IGNORECASE | re.MULTILINE)
        if m is None:
            return ""
        text = (m.group(1) if m.groups() else m.group(0)).strip()
    if choices:
        key = normalize(text, lowercase=True, strip_punctuation=True)
        for c in choices:
            if normalize(c, lowercase=True, strip_punctuation=True) == key:
                return c
        lowered = text.lower()
        found = []
        # Longer choices first so "very positive" is not read as "positive".
        for c in sorted(choices, key=len, reverse=True):
            m = _choice_regex(unicodedata.normalize("NFKC", c).lower()).search(lowered)
            if m is not None and not any(s <= m.start() < e for s, e, _ in found):
                found.append((m.start(), m.end(), c))
        return min(found)[2] if found else ""
    for line in text.splitlines():
        line = line.strip()
        while line and is_punctuation(line[-1]):
            line = line[:-1].rstrip()
        if line:
            return line
    return ""


def answer_accuracy(
    predictions: Sequence[str],
    references: Sequence[str],
    choices: Sequence[str] | None = None,
    pattern: str | None = None,
) -> float:
    """Share of predictions whose extracted answer equals the reference's label.

    The reference goes through the same extraction (without the pattern), so a reference
    ``"Positive."`` is the label ``positive``; both sides are compared normalised
    (case, punctuation and width folded).
    """
    if not references:
        return float("nan")
    hits = 0
    for p, r in zip(predictions, references, strict=True):
        got = extract_answer(p, choices, pattern)
        want = extract_answer(r, choices) or r
        hits += bool(got) and normalize(got, True, True) == normalize(want, True, True)
    return hits / len(references)

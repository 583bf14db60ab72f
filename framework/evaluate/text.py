"""Text facts every metric may need: the language of the references, and per-example chrF.

The metric plugins (``plugins/metrics/``) keep their own scoring; this module holds what the
evaluate stage itself uses (the evaluation language on :class:`EvalContext`, the per-example
chrF of ``eval_report.md``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from framework.errors import ConfigError

#: CJK ideographs (unified, extension A, compatibility) -- what makes a text "Chinese" here.
CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK = re.compile(f"[{CJK_RANGES}]")

LANGUAGES = ("auto", "en", "zh")


def one_of(setting: Any, choices: Sequence[str], what: str, where: str, note: str = "") -> str:
    """``setting`` as a string (``None``/empty: ``auto``) if it is one of ``choices``.

    Raises:
        ConfigError: naming ``where`` and the choices.
    """
    setting = str(setting or "auto")
    if setting not in choices:
        raise ConfigError(
            f"Unknown {what} '{setting}'.", where=where, hint=f"one of {', '.join(choices)}{note}"
        )
    return setting


def has_cjk(text: str) -> bool:
    """Whether ``text`` contains a Chinese (CJK) character."""
    return _CJK.search(text) is not None


def detect_language(texts: Sequence[str], setting: str = "auto") -> str:
    """``"zh"`` or ``"en"``: the setting when it is not ``auto``, else ``zh`` if any text is Chinese.

    One Chinese reference is enough: the ``zh`` tokenizers treat Latin text exactly like the
    English ones (sacrebleu's ``zh`` falls back to ``13a`` outside CJK), so mixed data loses
    nothing.
    """
    setting = one_of(setting, LANGUAGES, "evaluation language", "evaluator.language")
    if setting != "auto":
        return setting
    return "zh" if any(has_cjk(t) for t in texts) else "en"


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF (0-100): character n-gram F-score, language-agnostic (per-example scores)."""
    from sacrebleu.metrics import CHRF

    return float(_chrf_metric(CHRF).sentence_score(prediction, [reference]).score)


@lru_cache(maxsize=1)
def _chrf_metric(cls: Any) -> Any:
    return cls()

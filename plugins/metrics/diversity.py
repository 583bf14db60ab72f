"""Diversity of the generated answers, and a warning when a fine-tune collapsed.

Metrics (``evaluator.metrics=[...,distinct_1,distinct_2,repetition_rate]``):

* ``distinct_1`` / ``distinct_2``: distinct unigrams / bigrams over all unigrams / bigrams of
  the answers (Li et al., 2016); higher is more diverse.
* ``repetition_rate``: the share of n-grams (``evaluator.diversity.n``, default 2) of an
  answer that repeat an earlier n-gram of the same answer ("江水江江江" scores high);
  lower is better.

Tokens: each Chinese character is one, and so is each run of other letters or digits
(lowercased); punctuation and spaces are not tokens. So English counts words, Chinese
characters, and mixed text both.

Whatever metrics are selected, :func:`tunesmith_report_notes` looks at the tuned answers
and warns, in the console and ``eval_report.md``, when they collapsed: one answer makes up
most of them while the references are diverse, or n-gram repetition within answers is far
above the references'. Perplexity may well improve while this happens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework import Metric, Note, hookimpl
from framework.evaluate.context import EvalContext
from framework.evaluate.text import CJK_RANGES

_TOKEN = re.compile(rf"[{CJK_RANGES}]|[^\W_{CJK_RANGES}]+")

#: A collapse: the most common tuned answer is more than this share of the answers ...
DOMINANT_SHARE = 0.5
#: ... and at least this many times the share of the most common reference.
DOMINANT_RATIO = 2.0
#: A collapse: repetition within answers is at least this much above the references' ...
REPETITION_GAP = 0.2
#: ... and at least this many times theirs.
REPETITION_RATIO = 2.0
#: Fewer answers than this say nothing about collapse.
MIN_ANSWERS = 3

NAMES = ("distinct_1", "distinct_2", "repetition_rate")


def tokens(text: str) -> list[str]:
    """The diversity tokens of ``text``: Chinese characters and lowercased words."""
    return _TOKEN.findall(text.lower())


def ngrams(items: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``n``-grams of ``items``, in order."""
    return [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct ``n``-grams over all ``n``-grams of ``texts`` (n-grams do not cross texts);
    0.0 when there are none."""
    grams = [g for text in texts for g in ngrams(tokens(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 2) -> float:
    """The share of ``n``-grams that repeat an earlier ``n``-gram of the same text, over all
    texts (0.0 when there are none)."""
    total = repeated = 0
    for text in texts:
        grams = ngrams(tokens(text), n)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


def top_share(texts: Sequence[str]) -> tuple[str, float]:
    """The most common text (whitespace-normalised) and its share of ``texts``."""
    counts = Counter(" ".join(t.split()) for t in texts)
    if not counts:
        return "", 0.0
    text, count = counts.most_common(1)[0]
    return text, count / len(texts)


def _n(cfg: DictConfig | None) -> int:
    node = OmegaConf.select(cfg, "evaluator.diversity", default=None) if cfg is not None else None
    return int((node or {}).get("n", 2))


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric("distinct_1", needs=("generations",), description="distinct words/characters"),
        Metric("distinct_2", needs=("generations",), description="distinct bigrams"),
        Metric(
            "repetition_rate",
            higher_is_better=False,
            needs=("generations",),
            description="share of n-grams repeated within an answer",
        ),
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    wanted = [m for m in NAMES if m in metrics]
    if not wanted:
        return None
    answers = ctx.generations()
    values = {
        "distinct_1": lambda: distinct_n(answers, 1),
        "distinct_2": lambda: distinct_n(answers, 2),
        "repetition_rate": lambda: repetition_rate(answers, _n(ctx.cfg)),
    }
    return {m: values[m]() for m in wanted}


# --------------------------------------------------------------------------- collapse


def collapse_findings(answers: Sequence[str], references: Sequence[str], n: int = 2) -> list[str]:
    """Why ``answers`` look collapsed next to ``references`` (empty: they do not).

    Two signs: one answer dominates (more than :data:`DOMINANT_SHARE` of the answers and
    :data:`DOMINANT_RATIO` times the most common reference's share), or repetition within
    answers is far above the references' (:data:`REPETITION_GAP` more and
    :data:`REPETITION_RATIO` times as much).
    """
    if len(answers) < MIN_ANSWERS:
        return []
    found = []
    text, share = top_share(answers)
    _, ref_share = top_share(references)
    if share > DOMINANT_SHARE and share >= DOMINANT_RATIO * ref_share:
        shown = text if len(text) <= 60 else text[:57] + "..."
        found.append(
            f'one answer, "{shown}", is {share:.0%} of the {len(answers)} answers '
            f"(the most common reference is {ref_share:.0%} of them)"
        )
    rep, ref_rep = repetition_rate(answers, n), repetition_rate(references, n)
    if rep >= ref_rep + REPETITION_GAP and rep >= REPETITION_RATIO * ref_rep:
        found.append(
            f"{rep:.0%} of the {n}-grams within an answer repeat an earlier one "
            f"(references: {ref_rep:.0%})"
        )
    return found


def _advice(cfg: DictConfig | None) -> str:
    lr = OmegaConf.select(cfg, "optim.lr", default=None) if cfg is not None else None
    lower = f"optim.lr={float(lr) / 10:g}" if isinstance(lr, int | float) and lr else "optim.lr"
    return (
        f"What to try: a lower learning rate ({lower}), fewer epochs "
        "(trainer.max_epochs=1, or an earlier checkpoint), more (and more varied) training "
        "data, and a base model that already knows the language and the task. "
        "Read some answers in predictions.jsonl; the metrics evaluator.metrics=[...,distinct_1,"
        "distinct_2,repetition_rate] track diversity."
    )


@hookimpl
def tunesmith_report_notes(
    results: dict[str, Any], rows: list[dict], cfg: DictConfig
) -> list[Note] | None:
    answered = [r for r in rows if isinstance(r.get("tuned"), str)]
    found = collapse_findings(
        [r["tuned"] for r in answered], [str(r.get("reference", "")) for r in answered], _n(cfg)
    )
    if not found:
        return None
    base = [r["base"] for r in answered if isinstance(r.get("base"), str)]
    base_ok = len(base) == len(answered) and not collapse_findings(
        base, [str(r.get("reference", "")) for r in answered], _n(cfg)
    )
    text = (
        "The tuned model's answers look collapsed: "
        + "; ".join(found)
        + "."
        + (" The base model's answers were not." if base_ok else "")
        + ' Metrics such as perplexity can still improve ("better") while this happens: '
        "the model learned the answers' common form, not the task.\n" + _advice(cfg)
    )
    return [Note(text, title="the tuned answers collapsed", level="warning")]

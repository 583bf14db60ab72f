"""What a metric plugin gets: :class:`EvalContext`, the model, its examples and cached results."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from framework.data.chat import prompt_of, reference_of
from framework.errors import ConfigError
from framework.evaluate.predictions import PredictionStore, example_id
from framework.evaluate.stats import TokenStats, choice_logliks, token_stats
from framework.model.generation import generate, prompt_text

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- context


@dataclass
class EvalContext:
    """What a metric plugin needs: the model, the examples, and cached model outputs.

    ``generations()``, ``token_stats()`` and ``choice_logliks()`` are computed once, on first
    use, and shared by every metric.

    Attributes:
        model: the model being scored (for ``base`` of an adapter run: the tuned model with
            its adapter disabled while the side is scored).
        tokenizer: its tokenizer.
        examples: the examples scored (chat examples with a last assistant turn).
        cfg: the run config; ``cfg.evaluator`` is the evaluator group.
        label: the side, ``base`` or ``tuned``.
        store: where answers are appended as they are produced (``None``: kept in memory).
        base: for the tuned side, a function returning a context manager that yields the base
            model (see :meth:`reference`); ``None``: the scored model is the base itself.
        plugins: the plugin manager (to call other hooks, e.g. the objective's
            ``tunesmith_sequence_reward``); ``None`` outside the evaluate stage.
        cache: a place for metric plugins to share what they computed for this side (e.g.
            the rewards both ``preference_accuracy`` and ``reward_margin`` read).
    """

    model: Any
    tokenizer: Any
    examples: list[dict]
    cfg: DictConfig
    label: str = "tuned"
    store: PredictionStore | None = None
    base: Callable[[], AbstractContextManager[Any]] | None = field(default=None, repr=False)
    plugins: Any = field(default=None, repr=False)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _generations: list[str] | None = field(default=None, repr=False)
    _stats: TokenStats | None = field(default=None, repr=False)
    _choice: list[list[tuple[float, int]]] | None = field(default=None, repr=False)

    @contextmanager
    def reference(self) -> Iterator[Any]:
        """The model the scored one is compared against (a preference objective's reference):
        the base model (for an adapter: the tuned model with its adapter off, else a fresh
        build, freed afterwards); on the base side, the scored model itself."""
        if self.base is None:
            yield self.model
            return
        with self.base() as model:
            yield model

    @property
    def evaluator(self) -> DictConfig:
        return self.cfg.evaluator

    def references(self) -> list[str]:
        return [reference_of(e) for e in self.examples]

    def prompts(self) -> list[str]:
        """The prompt of every example as the model sees it (the same rendering as chat)."""
        return [prompt_text(self.tokenizer, prompt_of(e)) for e in self.examples]

    def language(self) -> str:
        """``zh`` or ``en``: ``evaluator.language``, or detected from the references."""
        from framework.evaluate.text import detect_language

        return detect_language(self.references(), self.evaluator.get("language", "auto"))

    def generations(self) -> list[str]:
        """The answer of every example, generated in batches (and stored) on first use.

        Answers already in ``predictions.jsonl`` for this side (same model and settings)
        are reused; the others are generated and appended batch by batch.
        """
        if self._generations is None:
            self._generations = self._generate()
        return self._generations

    def _generate(self) -> list[str]:
        prompts = self.prompts()
        ids = [example_id(e) for e in self.examples]
        answers: list[str | None] = [None] * len(prompts)
        if self.store is not None:
            answers = [self.store.answer(self.label, i) for i in ids]
        todo = [k for k, a in enumerate(answers) if a is None]
        if todo:
            log.info("%s: generating %d answers", self.label, len(todo))

        def keep(batch: list[int], texts: list[str]) -> None:
            rows = []
            for j, text in zip(batch, texts, strict=True):
                k = todo[j]
                answers[k] = text
                ex = self.examples[k]
                rows.append(
                    {
                        "id": ids[k],
                        "source": ex.get("_source"),
                        "messages": prompt_of(ex),
                        "prompt": prompts[k],
                        "reference": reference_of(ex),
                        self.label: text,
                    }
                )
            if self.store is not None:
                self.store.append(self.label, rows)

        if todo:
            generate(
                self.model,
                self.tokenizer,
                [prompts[k] for k in todo],
                self.evaluator,
                keep,
                references=self.references(),  # all of them: the same size on a re-run
            )
        return [a or "" for a in answers]

    def max_new_tokens(self) -> int:
        """The most new tokens an answer may have (``evaluator.max_new_tokens``, or sized
        from the references when that is null)."""
        from framework.model.generation import resolve_max_new_tokens

        return resolve_max_new_tokens(self.evaluator, self.tokenizer, self.references())

    def token_stats(self) -> TokenStats:
        """Teacher-forced loss / accuracy over the answer tokens of the examples."""
        if self._stats is None:
            self._stats = token_stats(self.model, self.tokenizer, self.examples, self.cfg)
        return self._stats

    def loss_stats(self) -> tuple[float, int]:
        """``(summed token loss, token count)`` over the answers of the examples."""
        s = self.token_stats()
        return s.nll, s.tokens

    def choices(self) -> list[list[str]]:
        """The answer options of each example, for classification / multiple choice.

        From the example's own ``choices`` field, else ``evaluator.choices``, else the
        distinct references of the examples scored (at most ``evaluator.max_choices``).
        """
        fixed = [str(c) for c in (self.evaluator.get("choices") or [])]
        if not fixed and not all(e.get("choices") for e in self.examples):
            fixed = sorted(set(self.references()))
            limit = int(self.evaluator.get("max_choices", 20))
            if len(fixed) > limit:
                raise ConfigError(
                    f"Choice metrics need a short list of answers, but the {len(fixed)} "
                    f"examples have {len(fixed)} different references (more than "
                    f"evaluator.max_choices={limit}).",
                    where="evaluator.choices",
                    hint="list the labels, e.g. evaluator.choices=[positive,negative], or "
                    "drop accuracy/choice_accuracy from evaluator.metrics for free-text data.",
                )
        return [
            [str(c) for c in e["choices"]] if e.get("choices") else fixed for e in self.examples
        ]

    def choice_logliks(self) -> list[list[tuple[float, int]]]:
        """``(log-likelihood, tokens)`` of each choice of each example (computed once)."""
        if self._choice is None:
            self._choice = choice_logliks(
                self.model, self.tokenizer, self.examples, self.choices(), self.cfg
            )
        return self._choice

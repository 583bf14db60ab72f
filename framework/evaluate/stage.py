"""The evaluate stage: score the base and the tuned model on the same examples, side by side.

What it does, in order:

1. picks the examples (``evaluator.split``, default ``test``; ``evaluator.max_samples``);
2. finds the tuned model: ``evaluator.adapter`` (an adapter folder on the configured model),
   ``evaluator.model_path`` (any local model folder), ``evaluator.run`` (a finished run
   directory), or what this run trained; with none of them only the configured model is
   scored (as ``base``);
3. scores the base model first (for an adapter: the same model with the adapter disabled;
   otherwise a fresh build, see ``evaluator.base``), then the tuned one, through the
   ``tunesmith_compute_metrics`` plugins;
4. writes ``metrics.json``, ``predictions.jsonl`` and ``eval_report.md`` and prints the table.

Generations are appended to ``predictions.jsonl`` batch by batch (flushed), so a stopped
evaluation keeps what it produced and a re-run generates only what is missing, per side.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.descriptors import Metric, Score
from framework.errors import ConfigError, DataError
from framework.evaluate.context import EvalContext
from framework.evaluate.predictions import PREDICTIONS, PredictionStore, example_id
from framework.evaluate.report import DIRECTIONS, STDERR
from framework.evaluate.sources import (
    BASE_MODES,
    apply_run_source,
    base_mode,
    base_model,
    fingerprints,
    load_tuned,
    resolve_tuned,
)
from framework.run import Run, read_jsonl, write_json

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- scoring


@dataclass
class Scored:
    """One model's results: the values, the direction of each key, and standard errors.

    Attributes:
        values: ``{key: value}`` in the order of ``evaluator.metrics``.
        directions: ``{key: "higher" | "lower" | None}``: what the computation returned in a
            :class:`framework.Score`, else what the selected metric declares (``None``: no
            declared direction).
        stderr: ``{key: standard error}`` for the keys whose :class:`framework.Score` had one.
    """

    values: dict[str, float] = field(default_factory=dict)
    directions: dict[str, str | None] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)


def _direction(higher_is_better: bool | None) -> str | None:
    if higher_is_better is None:
        return None
    return "higher" if higher_is_better else "lower"


def _declared(run: Run, name: str) -> str | None:
    """The direction the plugin serving the metric ``name`` declared."""
    info = run.plugins.describe("metric", name)
    return info.direction if isinstance(info, Metric) else None


def score(run: Run, ctx: EvalContext) -> Scored:
    """All selected metrics for one model, in the order of ``evaluator.metrics``.

    A selected name is computed when a plugin returns it, or returns keys that start with
    it (``rouge`` gives ``rouge1``, ``rouge2``, ``rougeL``). A plugin may return plain
    numbers or :class:`framework.Score` values; a key's direction is the ``Score``'s
    ``higher_is_better`` when given, else the one its selected metric declares.
    """
    names = [str(m) for m in run.cfg.evaluator.metrics]
    merged: dict[str, Any] = {}
    for result in run.hook.tunesmith_compute_metrics(metrics=names, ctx=ctx):
        merged.update(result or {})
    out = Scored()
    missing = []
    for n in names:
        keys = [k for k in merged if k == n or (k.startswith(n) and n not in merged)]
        if not keys:
            missing.append(n)
        for k in keys:
            got = merged[k]
            if isinstance(got, Score):
                out.values[k] = float(got.value)
                declared = _direction(got.higher_is_better)
                out.directions[k] = declared if declared is not None else _declared(run, n)
                if got.stderr is not None:
                    out.stderr[k] = float(got.stderr)
            else:
                out.values[k] = float(got)
                out.directions[k] = _declared(run, n)
    if missing:
        raise ConfigError(
            f"No plugin computed the metrics {missing}.",
            where="evaluator.metrics",
            hint="a plugin that declares a metric must return it from tunesmith_compute_metrics.",
        )
    return out


def results_payload(scored: dict[str, Scored]) -> dict[str, Any]:
    """What ``metrics.json`` holds: ``{"base": {key: value}, "tuned": {...}, "directions":
    {key: "higher" | "lower" | null}}``, and ``"stderr": {side: {key: value}}`` when any
    value has one. ``base``/``tuned`` stay plain numbers, as readers of the file expect."""
    payload: dict[str, Any] = {side: dict(s.values) for side, s in scored.items()}
    directions: dict[str, str | None] = {}
    for s in scored.values():
        for key, direction in s.directions.items():
            if directions.get(key) is None:
                directions[key] = direction
    payload[DIRECTIONS] = directions
    stderr = {side: dict(s.stderr) for side, s in scored.items() if s.stderr}
    if stderr:
        payload[STDERR] = stderr
    return payload


def check_metrics(run: Run) -> None:
    """Reject a misspelled metric name before any model is loaded."""
    if not run.cfg.evaluator.metrics:
        raise ConfigError(
            "No metric is selected.",
            where="evaluator.metrics",
            hint="e.g. evaluator.metrics=[perplexity,exact_match]",
        )
    for name in run.cfg.evaluator.metrics:
        run.plugins.require("metric", str(name))


# --------------------------------------------------------------------------- the stage


def eval_examples(run: Run, run_src: Path | None = None) -> list[dict]:
    """The examples to score: ``evaluator.split`` (``test``), at most ``evaluator.max_samples``.

    With ``evaluator.run`` and ``evaluator.run_data`` (the default) they come from that run's
    prepared splits; otherwise from this run's data (prepared now if needed).
    """
    from framework.data.prepare import SPLITS, load_splits

    ev = run.cfg.evaluator
    split = str(ev.get("split", "test"))
    if split not in SPLITS:
        raise ConfigError(
            f"Unknown split '{split}'.", where="evaluator.split", hint=f"one of {SPLITS}"
        )
    if run_src is not None and ev.get("run_data", True):
        path = run_src / "data" / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(
                f"The run has no {split} split.",
                where=str(path),
                hint="set evaluator.run_data=false to use the configured data set instead.",
            )
        examples = read_jsonl(path)
    else:
        examples = load_splits(run)[split]
    examples = [e for e in examples if _has_answer(e)]
    limit = ev.get("max_samples")
    if limit:
        examples = examples[: int(limit)]
    if not examples:
        raise ConfigError(
            f"The {split} split has no example with an answer, so there is nothing to evaluate.",
            where=f"data.split.{split}",
            hint=f"give the {split} split a share, e.g. data.split.{split}=0.1",
        )
    return examples


@contextmanager
def _base_alone(run: Run, tuned: Any, tokenizer: Any, mode: str) -> Iterator[Any]:
    with base_model(run, tuned, tokenizer, mode) as (model, _):
        yield model


def _has_answer(example: dict) -> bool:
    return any(m.get("role") == "assistant" for m in example.get("messages", []))


def evaluate(run: Run) -> dict[str, Any]:
    """Run the evaluate stage: base vs tuned on the same examples.

    Returns:
        What ``metrics.json`` holds (see :func:`results_payload`): ``{"base": {metric:
        value}, "tuned": {metric: value}, "directions": {metric: "higher" | "lower" |
        None}}`` (a side is absent when it was not scored).
    """
    from framework.evaluate.report import collect_notes, print_notes, print_table, write_report

    cfg = run.cfg
    check_metrics(run)
    run_src = apply_run_source(run)
    examples = eval_examples(run, run_src)
    source = resolve_tuned(run, run_src)
    compare = bool(cfg.evaluator.get("compare_base", True))
    if source is None:
        log.warning(
            "no tuned model (nothing trained in %s, and no evaluator.adapter / model_path / "
            "run): scoring the configured model '%s' only",
            run.dir,
            cfg.model.name,
        )
    store = PredictionStore(run.dir / PREDICTIONS, fingerprints(run, source))
    tuned, tokenizer = load_tuned(run, source) if source is not None else (None, None)
    scored: dict[str, Scored] = {}
    mode = "rebuild"
    ctx: EvalContext | None = None
    if compare or source is None:
        mode = base_mode(run, tuned)
        log.info("scoring base model (%s) on %d examples", mode, len(examples))
        with base_model(run, tuned, tokenizer, mode) as (model, tok):
            ctx = EvalContext(model, tok, examples, cfg, "base", store, plugins=run.plugins)
            scored["base"] = score(run, ctx)
    if tuned is not None:
        log.info("scoring tuned model (%s) on %d examples", source.describe(), len(examples))
        ctx = EvalContext(tuned, tokenizer, examples, cfg, "tuned", store, plugins=run.plugins)
        ctx.base = lambda: _base_alone(run, tuned, tokenizer, base_mode(run, tuned))
        scored["tuned"] = score(run, ctx)
        if source.kind == "artifact" and run_src is None:  # this run's own: keep for export
            run.model, run.tokenizer, run.trained = tuned, tokenizer, True

    rows = store.compact([example_id(e) for e in examples])
    results = results_payload(scored)
    run.metrics.pop(STDERR, None)  # from an earlier evaluation in this process
    run.metrics.update(results)
    write_json(run.dir / "metrics.json", results)
    notes = collect_notes(run.hook, results, rows, cfg)  # e.g. "the tuned answers collapsed"
    print_table(results, title=f"evaluation on the {cfg.evaluator.get('split', 'test')} split")
    print_notes(notes)
    sections = [s for s in run.hook.tunesmith_report_sections(run=run, results=results) if s]
    write_report(
        run.dir / "eval_report.md",
        results,
        rows,
        cfg,
        sections=sections,
        info={
            "examples": len(examples),
            "max_new_tokens": ctx.max_new_tokens() if ctx is not None else None,
            "tuned": source.describe() if source else "none",
            "base": BASE_MODES[mode].format(model=cfg.model.name)
            if "base" in results
            else "not scored (evaluator.compare_base=false)",
        },
        notes=notes,
    )
    from framework.train.loggers import log_results

    log_results(run, results)  # the trackers (cfg.logger) get base/... and tuned/... too
    return results

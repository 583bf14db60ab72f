"""``lm_eval``: lm-evaluation-harness tasks (benchmarks, local task folders) on base and tuned.

Select it with ``evaluator.metrics=[..., lm_eval]`` and name tasks under
``evaluator.lm_eval.tasks``; ``evaluator=forgetting`` scores the shipped general-knowledge
task (English and Chinese) with it. Each side's scores are ``lm_eval/<task>/<metric>``
with lm-eval's direction and standard error; its results and per-sample logs go to
``<run dir>/lm_eval/<side>/``; eval_report.md gets a benchmark table and a line saying
whether the fine-tune cost general ability. Needs the ``eval`` extra (``pip install -e
".[eval]"``). Written against the public hooks only, like an outside package.
"""

from __future__ import annotations

from typing import Any

from framework import Metric, hookimpl
from plugins.metrics import lm_eval_runner as runner


@hookimpl
def tunesmith_provides() -> list[Metric]:
    return [
        Metric(
            runner.NAME,
            # each key carries lm-eval's own direction (a Score), so none is declared here
            higher_is_better=None,
            needs=("model",),
            description="lm-evaluation-harness tasks (evaluator.lm_eval.tasks) on the model",
        )
    ]


@hookimpl
def tunesmith_check_config(cfg: Any) -> None:
    if runner.selected(cfg) and "evaluate" in [str(s) for s in cfg.get("stages") or []]:
        runner.check(cfg)


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: Any) -> dict[str, Any] | None:
    if runner.NAME not in metrics:
        return None
    return runner.evaluate(ctx)


@hookimpl
def tunesmith_report_sections(run: Any, results: dict[str, Any]) -> str | None:
    return runner.forgetting_section(run.dir, results, run.cfg)

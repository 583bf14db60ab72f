"""The stages ``human_eval_export`` and ``human_eval_import`` (blinded human evaluation).

``stages=[human_eval_export]`` writes ``human_eval/sheet.csv`` and ``human_eval/key.json`` in
the run directory from its ``predictions.jsonl`` (base vs tuned, or this run's answers vs
``evaluator.human_eval.vs``); ``stages=[human_eval_import]`` reads the filled sheet and
writes ``human_eval/results.json`` with win / tie / loss rates per side.
"""

from __future__ import annotations

from framework import hookimpl
from framework.run import Run


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"stage": ["human_eval_export", "human_eval_import"]}


@hookimpl
def tunesmith_run_stage(name: str, run: Run) -> bool | None:
    if name == "human_eval_export":
        from framework.human_eval import export_stage

        export_stage(run)
    elif name == "human_eval_import":
        from framework.human_eval import import_stage

        import_stage(run)
    else:
        return None
    return True

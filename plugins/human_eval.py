"""The stages ``human_eval_export`` and ``human_eval_import`` (blinded human evaluation).

``stages=[human_eval_export]`` writes ``human_eval/sheet.csv`` and ``human_eval/key.json`` in
the run directory from its ``predictions.jsonl`` (base vs tuned, or this run's answers vs
``evaluator.human_eval.vs``); ``stages=[human_eval_import]`` reads the filled sheet and
writes ``human_eval/results.json`` with win / tie / loss rates per side.
"""

from __future__ import annotations

from framework import Stage, hookimpl
from framework.run import Run


def export_sheet(run: Run) -> None:
    from framework.evaluate.human_eval import export_stage

    export_stage(run)


def import_sheet(run: Run) -> None:
    from framework.evaluate.human_eval import import_stage

    import_stage(run)


@hookimpl
def tunesmith_provides() -> list[Stage]:
    return [
        Stage("human_eval_export", run=export_sheet, description="write a blinded A/B sheet"),
        Stage("human_eval_import", run=import_sheet, description="read the sheet: win rates"),
    ]

"""The four core stages: prepare, train, evaluate, export."""

from __future__ import annotations

from framework import hookimpl
from framework.run import Run


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"stage": ["prepare", "train", "evaluate", "export"]}


@hookimpl
def tunesmith_run_stage(name: str, run: Run) -> bool | None:
    if name == "prepare":
        from framework.data import prepare

        prepare(run)
    elif name == "train":
        from framework.train import train

        train(run)
    elif name == "evaluate":
        from framework.evaluation import evaluate

        evaluate(run)
    elif name == "export":
        from framework.export import export

        export(run)
    else:
        return None
    return True

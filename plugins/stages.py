"""The four core stages: prepare, train, evaluate, export.

Each stage is registered with a :class:`framework.Stage` descriptor whose ``run`` imports its
module only when the stage runs (``python run.py plugins`` stays free of torch).
"""

from __future__ import annotations

from framework import Stage, hookimpl
from framework.run import Run


def prepare(run: Run) -> None:
    from framework.data.prepare import prepare

    prepare(run, defer_plots=True)  # drawn after training or at exit: off the path to step 1


def train(run: Run) -> None:
    from framework.train.stage import train

    train(run)


def evaluate(run: Run) -> None:
    from framework.evaluate.stage import evaluate

    evaluate(run)


def export(run: Run) -> None:
    from framework.export.stage import export

    export(run)


#: The stage keys whose configured names each stage reads (checked at start-up). Train and
#: evaluate prepare the data when it is not prepared yet.
DATA = ("file", "format", "objective", "model")


@hookimpl
def tunesmith_provides() -> list[Stage]:
    return [
        Stage(
            "prepare",
            run=prepare,
            uses=DATA,
            description="load, validate, clean, split and report data",
        ),
        Stage(
            "train",
            run=train,
            uses=(*DATA, "method"),
            description="apply the method and fit with lightning.Trainer",
        ),
        Stage(
            "evaluate",
            run=evaluate,
            uses=(*DATA, "method", "metric"),
            description="score base and tuned on the test split",
        ),
        Stage(
            "export",
            run=export,
            uses=("model", "method", "export"),
            description="write the formats in export.formats",
        ),
    ]

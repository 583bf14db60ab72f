"""A Lightning callback for tests: what the process holds at the end of the first optimizer
step (added with ``+callbacks.step_probe._target_=tests.framework.step_probe.StepOne``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class StepOne(Callback):
    """Write ``{modules, files}`` at the end of step 1 into ``out`` (JSON): whether matplotlib
    (and torchmetrics' plotting) are imported, and which plots the run directory holds."""

    def __init__(self, out: str, run_dir: str) -> None:
        self.out, self.run_dir = Path(out), Path(run_dir)

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step != 1 or self.out.exists():
            return
        modules = ("matplotlib", "matplotlib.pyplot", "torchmetrics.utilities.plot")
        plots = ("data/lengths.png", "loss_curve.png")
        self.out.write_text(
            json.dumps(
                {
                    "modules": {m: m in sys.modules for m in modules},
                    "files": {f: (self.run_dir / f).exists() for f in plots},
                }
            ),
            encoding="utf-8",
        )

"""A Lightning callback that records what the benchmark measures inside a real tunesmith run.

Added to a run from the command line, like any callback::

    python run.py ... +callbacks.bench_probe._target_=benchmarks.probe.BenchProbe \
        +callbacks.bench_probe.out=/tmp/probe.json

It counts the non-pad tokens of each training batch (the ``num_tokens`` the collator puts in
every batch), takes the wall time at the end of the first and the last optimizer step, and
the process's peak RSS when training ends. ``BENCH_T0`` (seconds since the epoch, set by the
benchmark just before it starts the process) is the start of "time to first optimizer step".
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

from lightning.pytorch.callbacks import Callback

T_START = float(os.environ.get("BENCH_T0", time.time()))


class BenchProbe(Callback):
    """Record tokens, step times and peak RSS of a training run into ``out`` (JSON)."""

    def __init__(self, out: str, name: str = "tunesmith") -> None:
        self.out = out
        self.name = name
        self.tokens: list[Any] = []
        self.t_first = self.t_last = self.c_first = self.c_last = 0.0
        self.first_loss: float | None = None
        self.marks: list[tuple[float, int]] = []  # (wall time, batches) at each batch end
        self.last_loss: float | None = None

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = batch.get("num_tokens")
        self.tokens.append(n if n is not None else batch["attention_mask"].sum())
        if trainer.global_step == 1 and not self.t_first:
            self.t_first, self.c_first = time.time(), time.process_time()
            self.first_loss = float(outputs["loss"])
        self.t_last, self.c_last = time.time(), time.process_time()
        self.last_loss = outputs["loss"]
        self.marks.append((self.t_last, len(self.tokens)))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        tokens = [int(t) for t in self.tokens]
        steady = sum(tokens[1:])
        result = {
            "name": self.name,
            "steps": trainer.global_step,
            "time_to_first_step_s": self.t_first - T_START,
            "train_s": self.t_last - self.t_first,
            "tokens": sum(tokens),
            "steady_tokens": steady,
            "tokens_per_s": steady / max(self.t_last - self.t_first, 1e-9),
            "cpu_to_first_step_s": self.c_first,
            "tokens_per_cpu_s": steady / max(self.c_last - self.c_first, 1e-9),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "first_loss": self.first_loss,
            "last_loss": float(self.last_loss) if self.last_loss is not None else None,
            "late_tokens_per_s": late_tokens_per_s(self.marks, tokens),
        }
        with open(self.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


def late_tokens_per_s(marks: list[tuple[float, int]], tokens: list[int]) -> float | None:
    """Tokens/s over the second half of the batches: steady state once compilation (and any
    recompilation for new shapes) is done; ``None`` with fewer than 4 batches."""
    if len(marks) < 4:
        return None
    (t0, i0), (t1, i1) = marks[len(marks) // 2 - 1], marks[-1]
    return sum(tokens[i0:i1]) / max(t1 - t0, 1e-9)

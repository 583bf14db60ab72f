"""A test-only plugin for the reliability tests (``plugins=[tests.framework.reliability_plugins]``).

* Environment ``TS_TEST_PROGRESS=<file>``: before each training step, write the number of
  steps done so far to that file, so a test knows when to send a signal.
* ``TS_TEST_STEP_SLEEP=<seconds>``: sleep before each training step (time to kill it).
* ``TS_TEST_SIGNAL_AT=<n>``: send this process a signal (``TS_TEST_SIGNAL``, default
  ``SIGTERM``) while step ``n`` (1-based) runs.
* ``TS_TEST_CRASH_AT=<n>``: crash (no checkpoint saved) as step ``n`` starts.
* ``objective.name=sft_nan`` with ``TS_TEST_NAN_AT_STEP=<n>``: the sft loss, except that the
  training loss of step ``n`` (1-based) is NaN.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from framework import hookimpl
from framework.data.chat import encode_chat
from framework.train.losses import causal_lm_loss


class _Progress(pl.Callback):
    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        path = os.environ.get("TS_TEST_PROGRESS")
        if path:
            tmp = Path(path).with_suffix(".tmp")
            tmp.write_text(str(trainer.global_step))
            os.replace(tmp, path)
        at = int(os.environ.get("TS_TEST_SIGNAL_AT", "0") or 0)
        if at and trainer.global_step == at - 1:  # while step `at` runs, as a user would
            name = os.environ.get("TS_TEST_SIGNAL", "SIGTERM")
            os.kill(os.getpid(), getattr(signal, name))
        crash = int(os.environ.get("TS_TEST_CRASH_AT", "0") or 0)
        if crash and trainer.global_step == crash - 1:
            raise RuntimeError(f"simulated crash at step {crash}")
        delay = float(os.environ.get("TS_TEST_STEP_SLEEP", "0") or 0)
        if delay:
            time.sleep(delay)


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"objective": ["sft_nan"]}


@hookimpl
def tunesmith_configure_callbacks() -> list[pl.Callback]:
    return [_Progress()]


@hookimpl
def tunesmith_encode_example(name: str, example: dict, tokenizer: Any, cfg: Any) -> dict | None:
    if name != "sft_nan":
        return None
    return encode_chat(tokenizer, example["messages"], max_length=int(cfg.data.max_length))


@hookimpl
def tunesmith_compute_loss(name: str, model: Any, batch: dict) -> Any:
    if name != "sft_nan":
        return None
    loss = causal_lm_loss(model, batch)
    at = int(os.environ.get("TS_TEST_NAN_AT_STEP", "0") or 0)
    if model.training and at:
        _calls["train"] += 1
        if _calls["train"] == at:
            return loss * float("nan")
    return loss


_calls = {"train": 0}

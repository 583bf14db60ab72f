"""Lightning callbacks that make training survive interruptions and stop on divergence.

* :class:`SaveOnInterrupt`: Ctrl-C (SIGINT) or SIGTERM (pre-emption, ``kill``, a scheduler
  ending the job) finishes the current step, saves ``last.ckpt`` and stops with
  :class:`RunInterrupted`; re-running the same command continues from that step. A second
  Ctrl-C stops at once.
* :class:`StopOnNonFiniteLoss`: a loss (or, outside fp16 loss scaling, a gradient) that
  becomes NaN or infinite stops the run *before* the optimizer step, so no checkpoint with
  broken weights is written; the message says what to change.
* :class:`ResumeState`: on resume, puts the data loader back at the saved position (see
  :func:`restore_data_position`), restores the random-number generators saved in every
  checkpoint, and says that the run resumed and from which step.

``conf/callbacks/default.yaml`` enables all three; set one to ``null`` to drop it.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from framework.stops import RunInterrupted, TrainingDiverged

log = logging.getLogger(__name__)

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


def checkpoint_callback(trainer: pl.Trainer) -> Any:
    """The trainer's ``ModelCheckpoint`` (the one that writes ``last.ckpt``), or ``None``."""
    return getattr(trainer, "checkpoint_callback", None)


def save_last(trainer: pl.Trainer) -> Path | None:
    """Save ``last.ckpt`` now, through the checkpoint callback; ``None`` if there is none."""
    cb = checkpoint_callback(trainer)
    if cb is None or not getattr(cb, "dirpath", None):
        return None
    if hasattr(cb, "save_last_now"):
        return cb.save_last_now(trainer)
    path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    trainer.save_checkpoint(str(path))
    return path


def last_good_checkpoint(trainer: pl.Trainer) -> tuple[Path | None, int | None]:
    """``(path, step)`` of the newest checkpoint on disk for this run, if any."""
    from framework.run import read_checkpoint_note

    cb = checkpoint_callback(trainer)
    if cb is None or not getattr(cb, "dirpath", None):
        return None, None
    last = Path(cb.dirpath) / "last.ckpt"
    if not last.exists():
        return None, None
    info = read_checkpoint_note(Path(cb.dirpath)) or {}
    return last, info.get("step")


class SaveOnInterrupt(pl.Callback):
    """On SIGINT/SIGTERM: finish the step, save ``last.ckpt``, stop with :class:`RunInterrupted`.

    The handlers are installed for the duration of ``trainer.fit`` only; outside it a
    signal behaves as usual (Ctrl-C raises ``KeyboardInterrupt``).
    """

    def __init__(self) -> None:
        self._originals: dict[int, Any] = {}  # the handlers before ours, kept for good
        self._active = False
        self._signum: int | None = None
        self._saved_step: int | None = None

    # -------------------------------------------------------------- handlers
    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            if current != self._handle:  # Lightning may have put ours back after a fit
                self._originals[signum] = current
            signal.signal(signum, self._handle)
        self._active = True

    def _original(self, signum: int) -> Any:
        handler = self._originals.get(signum)
        return handler if handler is not None else signal.SIG_DFL

    def _restore(self, trainer: pl.Trainer | None = None) -> None:
        self._active = False
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self._originals:
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, self._original(signum))
        # Lightning's signal connector restores, at its teardown, the handlers it found when
        # fit started (ours): have it restore the originals instead.
        saved = getattr(getattr(trainer, "_signal_connector", None), "_original_handlers", None)
        if isinstance(saved, dict):
            for signum, handler in list(saved.items()):
                if handler == self._handle:
                    saved[signum] = self._original(signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self._active:
            # Outside fit (Lightning's teardown can reinstate us): act as the original would.
            signal.signal(signum, self._original(signum))
            signal.raise_signal(signum)
            return
        if self._signum is not None and signum == signal.SIGINT:
            self._restore()
            print("\nSecond Ctrl-C: stopping now, without saving.", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        self._signum = signum
        print(
            f"\n{SIGNAL_NAMES.get(signum, signum)} received: saving a checkpoint at the end of "
            "this step, then stopping (Ctrl-C again stops at once, without saving).",
            file=sys.stderr,
            flush=True,
        )

    # -------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._signum = None
            self._install()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning's own SIGTERM handling can stop at an epoch end; make sure that step is saved.
        if self._signum is not None and self._saved_step != trainer.global_step:
            self._save(trainer)
        self._restore(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        if self._signum is not None:
            self._stop(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._signum is not None:  # the signal came during the last validation
            self._stop(trainer)

    def _save(self, trainer: pl.Trainer) -> Path | None:
        path = save_last(trainer)
        self._saved_step = trainer.global_step
        return path

    def _stop(self, trainer: pl.Trainer) -> None:
        signum = int(self._signum or signal.SIGINT)
        path = self._save(trainer)
        step = trainer.global_step
        limit = f" of {trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        saved = f"Saved {path}." if path else "No checkpoint callback is configured: nothing saved."
        raise RunInterrupted(
            f"Training was interrupted by {SIGNAL_NAMES.get(signum, signum)} at step {step}{limit} "
            f"(epoch {trainer.current_epoch}). {saved}",
            where=str(path) if path else None,
            hint=f"re-run the same command to continue from step {step}."
            if path
            else "re-run the same command; training starts over (callbacks.model_checkpoint "
            "is off).",
            signum=signum,
        )


class StopOnNonFiniteLoss(pl.Callback):
    """Stop when the loss (or a gradient) is NaN/inf, before it reaches the weights.

    Args:
        check_gradients: also check the gradients before each optimizer step (skipped under
            ``16-mixed`` precision, where the loss scaler handles overflowing steps itself).
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            raise self._diverged(
                trainer, pl_module, f"the training loss became {float(loss.detach())}"
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if not self.check_gradients or "16" in str(trainer.precision).replace("bf16", ""):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
            raise self._diverged(trainer, pl_module, "the gradients became NaN or infinite")

    @staticmethod
    def _diverged(
        trainer: pl.Trainer, pl_module: pl.LightningModule, what: str
    ) -> TrainingDiverged:
        step = trainer.global_step
        now = trainer.optimizers[0].param_groups[0].get("lr") if trainer.optimizers else None
        cfg = getattr(pl_module, "cfg", None)
        base = cfg.optim.get("lr") if cfg is not None and "optim" in cfg else None
        if base is not None:
            lr_hint = f"lower the learning rate (optim.lr={float(base):.3g}; try a tenth)"
            if isinstance(now, float) and not math.isclose(now, float(base)):
                lr_hint = lr_hint[:-1] + f"; the schedule had it at {now:.3g} at this step)"
        else:
            lr_hint = "lower the learning rate (optim.lr=...)"
        path, good_step = last_good_checkpoint(trainer)
        if path is not None:
            kept = f"The last good checkpoint is kept: {path}" + (
                f" (step {good_step})." if good_step is not None else "."
            )
        else:
            kept = "No checkpoint had been saved yet (save more often with callbacks.model_checkpoint.every_n_train_steps=N)."
        clip = trainer.gradient_clip_val
        hints = [lr_hint]
        if "32" not in str(trainer.precision) and "64" not in str(trainer.precision):
            hints.append(
                f"use a more stable precision (trainer.precision={trainer.precision} now; "
                "32-true, or bf16-mixed on GPUs that support it)"
            )
        hints += [
            "turn gradient clipping on (trainer.gradient_clip_val=1.0)"
            if not clip
            else f"clip gradients harder (trainer.gradient_clip_val={clip} now)",
            "add warm-up (optim.warmup_ratio=0.1)",
            "check the data for empty, garbled or extremely long examples "
            "(data/report.json, data/rejects.jsonl in the run directory)",
        ]
        return TrainingDiverged(
            f"Training stopped: {what} at step {step + 1} (epoch {trainer.current_epoch}); "
            f"no optimizer step was taken with it. {kept}",
            where=f"step {step + 1}, epoch {trainer.current_epoch}",
            hint="; ".join(hints) + ".",
        )


def _rng_state() -> dict[str, Any]:
    import numpy as np

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": [int(x) for x in np_state[1]],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(
            (
                "MT19937",
                np.array(s["keys"], dtype=np.uint32),
                s["pos"],
                s["has_gauss"],
                s["cached_gaussian"],
            )  # fmt: skip
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_data_position(trainer: pl.Trainer) -> bool:
    """Give the train data loaders the position saved in the checkpoint; ``True`` if done.

    Lightning restores stateful loaders only when it builds them after the checkpoint is
    loaded. When ``configure_optimizers`` asks for ``trainer.estimated_stepping_batches``
    (tunesmith's module does, for the schedule), the loaders are built earlier and the saved
    position is left pending; it is applied here, before the first batch is drawn.
    """
    fit_loop = trainer.fit_loop
    pending = getattr(fit_loop, "_combined_loader_states_to_load", None)
    combined = getattr(fit_loop, "_combined_loader", None)
    if not pending or combined is None:
        return False
    for loader in combined.flattened:  # built before the checkpoint set the epoch
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(trainer.current_epoch)
    combined._load_state_dicts(pending)
    fit_loop._combined_loader_states_to_load = []
    return True


def _csv_loggers(trainer: pl.Trainer) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    return [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]


def csv_history(logger: Any) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows a CSV logger has logged so far: its file plus what it still buffers."""
    import csv

    writer = logger.experiment
    header: list[str] = []
    rows: list[dict[str, str]] = []
    try:
        with open(writer.metrics_file_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except OSError:
        pass
    for row in writer.metrics:
        rows.append({k: "" if v is None else str(v) for k, v in row.items()})
    header = sorted(set(header) | set(writer.metrics_keys) | {k for r in rows for k in r})
    return header, rows


def pending_log_row(trainer: pl.Trainer) -> dict[str, str] | None:
    """The metrics row Lightning will log for the step that is ending, if not logged yet.

    A checkpoint saved in ``on_train_batch_end`` comes just before Lightning logs that
    step's metrics; a resumed run starts after that step, so the row is kept with the
    checkpoint instead.
    """
    try:
        from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

        loop = trainer.fit_loop
        progress = loop.epoch_loop.batch_progress.current
        if progress.processed <= progress.completed or loop._should_accumulate():
            return None
        connector = trainer._logger_connector
        if not connector.should_update_logs:
            return None
        metrics = convert_tensors_to_scalars(dict(connector.metrics["log"]))
    except Exception:  # noqa: BLE001 - private Lightning state: the row is a nicety
        return None
    if not metrics:
        return None
    metrics.setdefault("epoch", trainer.current_epoch)
    metrics["step"] = loop.epoch_loop._batches_that_stepped
    return {k: str(v) for k, v in metrics.items()}


def write_csv_history(logger: Any, header: list[str], rows: list[dict[str, str]]) -> None:
    """Put earlier rows back at the start of a CSV logger's ``metrics.csv``.

    Lightning's CSV logger deletes ``metrics.csv`` when a resumed run starts; without this
    the loss curve would begin at the resumed step.
    """
    import csv

    writer = logger.experiment
    keys = sorted(set(header) | set(writer.metrics_keys))
    writer.metrics_keys[:] = keys
    with open(writer.metrics_file_path, "w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        out.writeheader()
        out.writerows(rows)


class ResumeState(pl.Callback):
    """On resume: data position, random-number state and the loss history come back.

    Also says that the run resumed, and from which step.
    """

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None
        self._resumed: dict[str, Any] | None = None
        self._history: list[tuple[Any, list[str], list[dict[str, str]]]] = []

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The loss history travels in the checkpoint: consistent with it, and safe from
        # Lightning's CSV logger, which deletes its file when a resumed run starts.
        if not trainer.is_global_zero:  # only rank 0 writes checkpoints and logs
            return
        history = []
        for logger in _csv_loggers(trainer):
            try:
                header, rows = csv_history(logger)
            except (OSError, AttributeError, TypeError):  # only the curve's history is at stake
                header, rows = [], []
            pending = pending_log_row(trainer)
            if pending:
                rows.append(pending)
                header = sorted(set(header) | set(pending))
            history.append({"header": header, "rows": rows})
        checkpoint["tunesmith"] = {"rng": _rng_state(), "loss_history": history}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        ours = checkpoint.get("tunesmith") or {}
        self._pending_rng = ours.get("rng")
        loops = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        loaders = (loops.get("state_dict") or {}).get("combined_loader") or [{}]
        self._resumed = {
            "step": int(checkpoint.get("global_step", 0)),
            "epoch": loaders[0].get("epoch"),
            "batches": loaders[0].get("batches"),
        }
        step = self._resumed["step"]
        self._history = []
        for logger, saved in zip(
            _csv_loggers(trainer), ours.get("loss_history") or [], strict=False
        ):
            rows = [
                r
                for r in saved["rows"]
                if str(r.get("step", "")).isdigit() and int(r["step"]) < step
            ]
            self._history.append((logger, saved["header"], rows))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resumed is None or not trainer.ckpt_path:
            return
        restore_data_position(trainer)
        # only rank 0 writes logs (elsewhere a logger's experiment is a do-nothing stand-in)
        for logger, header, rows in self._history if trainer.is_global_zero else []:
            try:
                write_csv_history(logger, header, rows)
            except (OSError, AttributeError) as exc:  # only the curve's history is at stake
                log.warning("could not keep the loss history in %s: %s", logger.log_dir, exc)
        self._history = []
        step = trainer.global_step
        batch = 0
        if self._resumed.get("epoch") == trainer.current_epoch:
            batch = int(self._resumed.get("batches") or 0)
            if batch >= trainer.num_training_batches:
                batch = 0
        where = f"epoch {trainer.current_epoch}" + (f", batch {batch}" if batch else "")
        limit = f"; training continues to step {trainer.max_steps}" if trainer.max_steps > 0 else ""
        log.info("Resumed from %s at step %d (%s)%s.", trainer.ckpt_path, step, where, limit)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Restored here, not at load time: building the data iterator draws random numbers.
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

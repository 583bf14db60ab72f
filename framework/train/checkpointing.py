"""Checkpoints that are never half-written, and that load without running pickled code.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file beside the target,
  syncs it to disk, then renames it over the target: a kill, a full disk or a full quota
  during a save leaves the previous checkpoint as it was. It loads with
  ``torch.load(weights_only=True)``.
* :class:`AtomicModelCheckpoint` is Lightning's ``ModelCheckpoint`` that installs that IO
  on the trainer, checks up front that its directory is writable, saves ``last.ckpt`` at
  the step that reaches ``max_steps`` (so a larger budget continues mid-epoch), and keeps a
  small ``last.json`` beside ``last.ckpt`` (step, epoch, time) that tunesmith reads without
  loading the checkpoint. ``conf/callbacks/default.yaml`` selects it.
* :func:`drop_frozen_weights` and :func:`check_trainable_only` keep the frozen base out of
  checkpoints of adapter and partial methods (see :class:`framework.Method`'s ``kind``):
  such a checkpoint holds the trainable weights and every persistent buffer, the optimizer,
  the schedule, the loop, the data position and the random-number state; a resume rebuilds
  the frozen base from the model the run names, as the first attempt did. A checkpoint of
  ``kind="full"`` (or of a method that declares no kind) holds the whole model, as before.
  FSDP and DeepSpeed keep their own (sharded) checkpoint formats: they load the weights
  before any hook could tell them that part is missing.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from framework.descriptors import Method
from framework.errors import TunesmithError
from framework.run import (
    CHECKPOINT_NOTE,
    SaveError,
    atomic_path,
    check_writable,
    describe_disk,
    write_json,
)

log = logging.getLogger(__name__)

#: The checkpoint key that says its ``state_dict`` holds only the trainable weights.
TRAINABLE_ONLY = "tunesmith_trainable_only"

#: Method kinds whose checkpoints leave out the frozen weights.
FROZEN_BASE_KINDS = frozenset({"adapter", "partial"})

#: Strategies that save and load the weights themselves, in their own formats.
SHARDED_STRATEGIES = frozenset({"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"})


def method_kind(plugins: Any, name: str) -> str:
    """The ``kind`` the plugin serving method ``name`` declares; ``full`` when it declares none
    (the whole model is then checkpointed, which is always safe)."""
    info = plugins.describe("method", name)
    return info.kind if isinstance(info, Method) else "full"


def saves_trainable_only(kind: str, strategy: Any = None) -> bool:
    """Whether checkpoints of a method of ``kind`` under ``strategy`` leave out frozen weights."""
    return kind in FROZEN_BASE_KINDS and type(strategy).__name__ not in SHARDED_STRATEGIES


def trainable_state_keys(module: Any) -> set[str]:
    """The ``state_dict`` keys of ``module`` a trainable-only checkpoint keeps.

    Every parameter that requires a gradient (every name of a tied one) and every buffer:
    buffers are small, and one may change during training (running statistics), while a
    frozen parameter is by definition the base's own value.
    """
    keys = {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    keys.update(n for n, _ in module.named_buffers(remove_duplicate=False))
    return keys


def drop_frozen_weights(checkpoint: dict[str, Any], module: Any, kind: str) -> None:
    """Keep only the trainable weights (and buffers) in ``checkpoint["state_dict"]``.

    Marks the checkpoint with :data:`TRAINABLE_ONLY` so that loading it knows the frozen
    weights are missing on purpose.
    """
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return
    keep = trainable_state_keys(module)
    kept = {key: value for key, value in state.items() if key in keep}
    checkpoint["state_dict"] = kept
    checkpoint[TRAINABLE_ONLY] = {"method_kind": kind, "frozen_left_out": len(state) - len(kept)}


def check_trainable_only(checkpoint: dict[str, Any], module: Any) -> bool:
    """Whether ``checkpoint`` holds only trainable weights; if so, that they fit ``module``.

    A checkpoint written before tunesmith left frozen weights out holds the whole model
    and loads as it always did (``False``).

    Raises:
        TunesmithError: the checkpoint holds weights ``module`` does not have, or lacks one
            that ``module`` trains (it was written for another method or model).
    """
    if TRAINABLE_ONLY not in checkpoint or not isinstance(checkpoint.get("state_dict"), dict):
        return False
    saved = set(checkpoint["state_dict"])
    current = set(module.state_dict())
    trainable = {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    unexpected = sorted(saved - current)
    missing = sorted(trainable - saved)
    if unexpected or missing:
        raise TunesmithError(
            "The checkpoint does not fit the model being trained: it holds "
            f"{len(unexpected)} weight(s) the model does not have {unexpected[:3]} and lacks "
            f"{len(missing)} trainable one(s) {missing[:3]}.",
            where="checkpoints/last.ckpt",
            hint="it was written for another method or model: re-run with the run's own "
            "config, or start over with force=true.",
        )
    return True


def save_error(path: Path, exc: BaseException, what: str = "checkpoint") -> SaveError:
    """A :class:`SaveError` for a failed write of ``path``, saying what survived."""
    path = Path(path)
    kept = (
        f"The previous {what} is intact: {path}"
        if path.exists()
        else f"No earlier {what} existed at {path}; nothing half-written was left."
    )
    disk = describe_disk(path.parent)
    return SaveError(
        f"Could not write the {what} {path.name}: {type(exc).__name__}: {exc}\n  {kept}",
        where=f"{path.parent}" + (f" ({disk})" if disk else ""),
        hint="free disk space or fix the permissions, or write elsewhere with "
        "paths.output_dir=/a/bigger/disk (or TUNESMITH_OUTPUT=...); then re-run the same "
        "command to continue from the last checkpoint.",
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic saves and ``weights_only=True`` loads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        import torch

        path = Path(path)
        try:
            with atomic_path(path) as tmp, tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as exc:  # torch's zip writer reports ENOSPC as RuntimeError
            raise save_error(path, exc) from exc

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        import pickle

        from lightning.fabric.utilities.cloud_io import _load as pl_load

        path = Path(path)
        if not path.is_file():
            raise TunesmithError(
                f"The checkpoint {path} does not exist.",
                where=str(path),
                hint="check the path, or delete run_state.json to start the run over.",
            )
        try:
            return pl_load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise TunesmithError(
                f"The checkpoint {path.name} holds objects that cannot be loaded safely "
                f"(torch.load weights_only=True refused it): {exc}",
                where=str(path),
                hint="tunesmith only resumes from checkpoints it wrote; move this file away "
                "to start the training over.",
            ) from exc
        except (EOFError, RuntimeError, ValueError) as exc:
            raise TunesmithError(
                f"The checkpoint {path.name} is damaged and cannot be read: {exc}",
                where=str(path),
                hint="move it away (the step*.ckpt beside it, if any, is an older whole "
                "checkpoint: rename it to last.ckpt) and re-run the same command.",
            ) from exc


def write_sidecar(ckpt: Path, trainer: Any) -> None:
    """Record step, epoch and time of the checkpoint ``ckpt`` in ``last.json`` beside it."""
    info = {
        "checkpoint": ckpt.name,
        "step": int(trainer.global_step),
        "epoch": int(trainer.current_epoch),
        "max_steps": int(trainer.max_steps),
        "max_epochs": trainer.max_epochs,
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        write_json(ckpt.parent / CHECKPOINT_NOTE, info)
    except OSError as exc:  # the checkpoint itself is saved; the note is a convenience
        log.warning("could not write %s: %s", ckpt.parent / CHECKPOINT_NOTE, exc)


def install_atomic_io(trainer: Any) -> None:
    """Give ``trainer`` the atomic checkpoint IO, unless a strategy brought its own."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files are written atomically (see module docs).

    Takes exactly ``lightning.pytorch.callbacks.ModelCheckpoint``'s arguments.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        install_atomic_io(trainer)
        with warnings.catch_warnings():
            # resuming means the directory holds our own checkpoints: not worth a warning
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
            super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.dirpath and trainer.is_global_zero:
            check_writable(Path(self.dirpath), what="checkpoints")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # The step that reaches max_steps is saved here, in the middle of its epoch, so that
        # extending the run (a larger max_steps) continues the epoch where it stopped.
        # Lightning would otherwise save at the epoch end it forces, and resume in the wrong epoch.
        reached = 0 < trainer.max_steps <= trainer.global_step
        if (
            reached
            and self.save_last
            and self._last_global_step_saved != trainer.global_step
            and not trainer.sanity_checking
            and not trainer.fast_dev_run
        ):
            self.save_last_now(trainer)
            self._last_saved_at_limit = trainer.global_step

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        # A validation at the step that reached max_steps: Lightning would skip it as already
        # saved. Keep its top-k checkpoint, but leave the mid-epoch last.ckpt as it is.
        if (
            getattr(self, "_last_saved_at_limit", None) == trainer.global_step
            and self.monitor is not None
            and not trainer.sanity_checking
        ):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_validation_end(trainer, pl_module)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        path = Path(filepath)
        if path.stem.startswith(self.CHECKPOINT_NAME_LAST) and trainer.is_global_zero:
            write_sidecar(path, trainer)

    def save_last_now(self, trainer: Any) -> Path:
        """Save ``last.ckpt`` at the current step (used when a run is interrupted)."""
        if self.dirpath is None:
            raise TunesmithError("The checkpoint callback has no directory yet.")
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        self.last_model_path = str(path)  # before saving: the saved state must name it
        self._save_checkpoint(trainer, str(path))
        return path

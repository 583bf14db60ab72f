"""The LightningModule that fine-tunes any causal LM through the loss hook."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from framework.data.chat import IGNORE_INDEX
from framework.manager import TunesmithPluginManager
from framework.train.checkpointing import (
    check_trainable_only,
    drop_frozen_weights,
    method_kind,
    saves_trainable_only,
)
from framework.train.objective import (
    LossContext,
    ReferenceModel,
    compute_loss,
    describe_objective,
    objective_options,
)

log = logging.getLogger(__name__)


class FineTuneModule(pl.LightningModule):
    """Trains ``model`` with the loss of ``cfg.objective``; logs loss, lr, tokens/s, memory.

    The loss hook gets a :class:`framework.train.objective.LossContext` for every step. An
    objective that declares ``reference=True`` gets its reference model from it: the model
    with its adapters off (PEFT), else a frozen copy made here, before any checkpoint is
    restored, and kept out of the module's submodules (not trained, not checkpointed).

    Checkpoints of a method whose descriptor says ``kind="adapter"`` or ``"partial"`` hold
    only the trainable weights (and buffers), not the frozen base: resuming rebuilds the
    base from the run's model, and loads the rest (see
    :mod:`framework.train.checkpointing`). ``kind="full"`` checkpoints hold everything.

    ``precomputed``: the objective's reference values were computed before training
    (``tunesmith_precompute``), so no reference model is kept.
    """

    def __init__(
        self,
        model: Any,
        cfg: DictConfig,
        plugins: TunesmithPluginManager,
        precomputed: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.plugins = plugins
        self.objective = describe_objective(cfg, plugins)
        self.options = objective_options(cfg, self.objective)
        # a plain object, not a submodule: its copy (if any) is neither trained nor saved;
        # none at all when the reference's values were precomputed (framework.data.precompute)
        needs_reference = self.objective.reference and not precomputed
        self.reference = ReferenceModel(model) if needs_reference else None
        self._tokens: torch.Tensor | int = 0  # non-pad training tokens seen by this process
        self._window: deque[tuple[float, Any]] = deque()  # (time, tokens) per train batch
        self.method_kind = method_kind(plugins, str(cfg.method.name))
        self._compiled = 0  # blocks compiled by model.compile (see compile_blocks)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen base out of checkpoints of adapter and partial methods."""
        if saves_trainable_only(self.method_kind, self.trainer.strategy):
            drop_frozen_weights(checkpoint, self, self.method_kind)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Load a trainable-only checkpoint over the freshly built base (``strict=False``
        after checking that it holds every trainable weight and nothing foreign); a whole
        checkpoint (an older tunesmith's, or ``kind="full"``) loads strictly."""
        self.strict_loading = not check_trainable_only(checkpoint, self)

    def loss(
        self, batch: dict[str, torch.Tensor], training: bool = True, weight: int = 1
    ) -> torch.Tensor:
        """The objective's loss of ``batch`` (``weight``: the validation batch's weight)."""

        def log_extra(name: str, value: Any) -> None:
            if training:
                self.log(f"train/{name}", value, on_step=True, on_epoch=False)
            else:
                self.log(f"val/{name}", value, on_epoch=True, batch_size=weight, sync_dist=True)

        ctx = LossContext(
            cfg=self.cfg,
            options=self.options,
            objective=self.objective,
            step=int(self.global_step),
            training=training,
            model=self.model,
            logger=log_extra,
            reference_model=self.reference,
        )
        return compute_loss(self.plugins, self.model, batch, self.cfg, ctx)

    def on_fit_start(self) -> None:
        # from_pretrained returns a model in eval mode and Lightning keeps the modes it finds:
        # dropout and gradient checkpointing need train mode.
        self.model.train()
        if self.cfg.model.get("compile", False) and not self._compiled:
            self._compiled = compile_blocks(self.model)

    def on_fit_end(self) -> None:
        """Give the stages after training (evaluation's generation, export) the eager model:
        compiled for training shapes, generation would compile again for every shape."""
        if self._compiled:
            self._compiled = 0 if uncompile_blocks(self.model) else self._compiled

    def on_train_start(self) -> None:
        """Set each learning rate from its schedule at the step training starts at.

        A resumed run restores the optimizer's learning rates as they were when it stopped.
        That is right when the schedule is unchanged, but a finished run extended with a larger
        budget (trainer.max_steps / max_epochs) has a longer schedule: its first new step
        would use the old schedule's last rate (0 at the end of a cosine decay). Taking the
        rate from the (new) schedule at the restored step gives the same value in the first
        case and the right one in the second.
        """
        from torch.optim.lr_scheduler import LambdaLR

        self.strict_loading = True  # the checkpoint, if any, is loaded: later loads are strict
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, LambdaLR):
                continue
            step = scheduler.last_epoch
            rates = [
                base * fn(step)
                for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
            ]
            for group, lr in zip(scheduler.optimizer.param_groups, rates, strict=True):
                group["lr"] = lr
            scheduler._last_lr = rates

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self._window:  # the throughput window starts before the first batch
            self._window.append((time.perf_counter(), self._tokens))
        # non-pad tokens, kept on the device: no host sync until Lightning writes the logs
        n = batch.get("num_tokens")  # set by the collator (packed rows have no padding)
        if n is None and "attention_mask" in batch:
            n = batch["attention_mask"].sum()
        self._tokens = self._tokens + (n if n is not None else 0)
        loss = self.loss(batch, training=True)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        # the learning rate this step's update uses (the scheduler steps after it)
        self.log("train/lr", self._current_lr(), on_step=True, on_epoch=False)
        return loss

    def _current_lr(self) -> float:
        optimizer = self.optimizers()
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper
        return float(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log tokens/s and peak memory (Lightning writes every ``log_every_n_steps``).

        Tokens per second are non-pad tokens of this process over the last
        ``trainer.log_every_n_steps`` optimizer steps (a moving window, so a slow first step
        does not weigh on later figures).
        """
        trainer = self.trainer
        self._window.append((time.perf_counter(), self._tokens))
        span = max(1, trainer.log_every_n_steps) * max(1, trainer.accumulate_grad_batches)
        while len(self._window) > span + 1:
            self._window.popleft()
        (t0, n0), (t1, n1) = self._window[0], self._window[-1]
        if t1 > t0:
            rate = torch.as_tensor(n1 - n0, dtype=torch.float32) / (t1 - t0)
            self.log("train/tokens_per_s", rate, on_step=True, on_epoch=False)
        self.log("train/peak_mem_mb", peak_memory_mb(), on_step=True, on_epoch=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        n = validation_weight(batch)
        self.log(
            "val/loss",
            self.loss(batch, training=False, weight=n),
            prog_bar=True,
            on_epoch=True,
            batch_size=n,
            sync_dist=True,  # the mean over every process under DDP
        )

    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_scheduler

        optim = self.cfg.optim
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": float(optim.weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=float(optim.lr),
            betas=tuple(optim.get("betas", (0.9, 0.999))),
            eps=float(optim.get("eps", 1e-8)),
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = optim.get("warmup_steps")
        if warmup is None:
            warmup = int(float(optim.get("warmup_ratio", 0.0)) * total)
        name = str(optim.scheduler)
        if name == "constant" and int(warmup) > 0:
            name = "constant_with_warmup"  # transformers' "constant" ignores the warm-up
        try:
            scheduler = get_scheduler(
                name,
                optimizer,
                num_warmup_steps=int(warmup),
                num_training_steps=max(total, 1),
            )
        except ValueError as exc:
            from framework.errors import ConfigError

            raise ConfigError(
                f"Unknown learning-rate schedule '{name}': {exc}",
                where="optim.scheduler",
                hint="constant | linear | cosine | cosine_with_restarts | polynomial | "
                "inverse_sqrt (transformers.get_scheduler names)",
            ) from exc
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def compile_blocks(model: Any) -> int:
    """``torch.compile`` the repeated blocks of ``model`` in place (``model.compile=true``).

    Regional compilation: every module whose class the model lists in ``_no_split_modules``
    (its decoder layer, a Hugging Face attribute) is compiled with ``dynamic=True``, so the
    layers share one compiled graph and batches of other lengths (padding to the longest,
    packing) reuse it instead of recompiling. A model that lists no such class has the
    module the loss runs compiled whole. ``Module.compile`` leaves parameter names, and so
    checkpoints and saved adapters, as they are. Returns how many modules were compiled.
    """
    from framework.train.losses import packing_target

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        blocks = [packing_target(model)]
    for block in blocks:
        block.compile(dynamic=True)
    log.info(
        "model.compile: %d %s compiled with torch.compile (the first steps take longer)",
        len(blocks),
        type(blocks[0]).__name__,
    )
    return len(blocks)


def uncompile_blocks(model: Any) -> int:
    """Undo :func:`compile_blocks`: the modules run eagerly again. ``Module.compile`` keeps
    the compiled call beside the module's own and uses it while it is set; this unsets it.
    Returns how many modules were compiled."""
    count = 0
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
            count += 1
    return count


def validation_weight(batch: dict[str, Any]) -> int:
    """How much a validation batch weighs in the epoch's mean: its labelled tokens (the
    default batch), else its ``num_tokens``, else its number of rows."""
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        return max(int((labels[:, 1:] != IGNORE_INDEX).sum()), 1)
    n = batch.get("num_tokens")
    if n is not None:
        return max(int(n), 1)
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim()), None)
    return max(int(first.shape[0]), 1) if first is not None else 1


def peak_memory_mb() -> float:
    """Peak memory of this process in MiB: CUDA memory allocated on a GPU, else peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss``)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024

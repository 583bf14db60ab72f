"""The LightningModule that fine-tunes any causal LM through the loss hook."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from framework.chat import IGNORE_INDEX
from framework.manager import TunesmithPluginManager


class FineTuneModule(pl.LightningModule):
    """Trains ``model`` with the loss of ``cfg.objective``; logs loss, lr, tokens/s, memory."""

    def __init__(self, model: Any, cfg: DictConfig, plugins: TunesmithPluginManager) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.plugins = plugins
        self.objective = str(cfg.objective)
        self._tokens: Any = 0
        self._loss_sum: Any = 0.0  # losses since the progress bar last showed one
        self._loss_steps = 0
        self._t0: float | None = None

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.plugins.hook.tunesmith_compute_loss(
            name=self.objective, model=self.model, batch=batch, cfg=self.cfg
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        loss = self.loss(batch)
        # A tensor sum, read only at the logging interval: no host sync per step.
        n = batch.get("num_tokens")
        self._tokens = self._tokens + (n if n is not None else batch["attention_mask"].sum())
        # Logged every step, converted to a number only at the logging interval. (A prog_bar
        # value would be read back every step: a host sync on a GPU.)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_steps += 1
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (self.trainer.global_step % max(1, self.trainer.log_every_n_steps)) == 0:
            elapsed = time.perf_counter() - (self._t0 or time.perf_counter())
            if elapsed > 0:
                self.log("train/tokens_per_s", float(self._tokens) / elapsed, on_step=True)
            sched = self.lr_schedulers()
            if sched is not None:
                self.log("train/lr", sched.get_last_lr()[0], on_step=True)
            self.log("train/peak_mem_mb", _peak_memory_mb(), on_step=True)
            if self._loss_steps:  # the progress bar: mean loss since it was last shown
                mean = float(self._loss_sum) / self._loss_steps
                self.log("loss", torch.tensor(mean), prog_bar=True, logger=False, on_step=True)
                self._loss_sum, self._loss_steps = 0.0, 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self.log("val/loss", self.loss(batch), prog_bar=True, on_epoch=True, batch_size=max(n, 1))

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
        scheduler = get_scheduler(
            str(optim.scheduler),
            optimizer,
            num_warmup_steps=int(warmup),
            num_training_steps=max(total, 1),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

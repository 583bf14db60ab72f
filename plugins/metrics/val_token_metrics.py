"""A Lightning callback that logs perplexity and token accuracy on the validation split.

Added to the trainer by the ``plugins.metrics.validation`` plugin when
``evaluator.val_metrics`` lists them; the values land beside ``val/loss`` in the logger
(``logs/metrics.csv``) as ``val/perplexity`` and ``val/token_accuracy``. Batches that are not
the default padded shape (an objective that collates its own, such as preference pairs) are
skipped.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from framework.data.collate import is_padded_batch
from framework.evaluate.stats import TokenStats, batch_token_stats

VAL_METRICS = ("perplexity", "token_accuracy")


class ValTokenMetrics(pl.Callback):
    """Teacher-forced token metrics over each validation pass (one extra forward per batch).

    Args:
        metrics: which of ``perplexity`` and ``token_accuracy`` to log.
    """

    def __init__(self, metrics: list[str]) -> None:
        self.metrics = [m for m in metrics if m in VAL_METRICS]
        self.stats = TokenStats()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stats = TokenStats()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not is_padded_batch(batch):
            return  # an objective's own batches (a preference pair...) are not scored here
        model = getattr(pl_module, "model", pl_module)
        self.stats += batch_token_stats(model, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.stats.tokens:
            return
        values = {
            "perplexity": self.stats.perplexity,
            "token_accuracy": self.stats.accuracy,
        }
        for name in self.metrics:
            pl_module.log(f"val/{name}", values[name], on_epoch=True, prog_bar=False)

"""Token metrics on the validation split during training (``evaluator.val_metrics``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import hookimpl
from framework.errors import ConfigError


@hookimpl
def tunesmith_configure_callbacks(cfg: DictConfig) -> list[Any] | None:
    wanted = [str(m) for m in (cfg.evaluator.get("val_metrics") or [])]
    if not wanted:
        return None
    from plugins.metrics.val_token_metrics import VAL_METRICS, ValTokenMetrics

    unknown = [m for m in wanted if m not in VAL_METRICS]
    if unknown:
        raise ConfigError(
            f"Unknown validation metric(s) {unknown}.",
            where="evaluator.val_metrics",
            hint=f"choose among {list(VAL_METRICS)}, or set evaluator.val_metrics=[]",
        )
    return [ValTokenMetrics(wanted)]

"""The hooks of tunesmith-example: what tunesmith calls, and for which names.

Every single-owner hook gets the ``name`` the user picked and returns ``None`` for names it
does not serve; the metric hook is fan-out and answers only for the metrics it computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from framework import Method, Metric, hookimpl
from tunesmith_example import last_layers
from tunesmith_example.token_f1 import mean_token_f1


@hookimpl
def tunesmith_provides() -> list:
    """What this plugin serves, and what tunesmith needs to know about each name."""
    return [
        Metric(
            "token_f1",
            higher_is_better=True,
            needs=("generations",),
            description="word overlap of answer and reference (partial credit)",
        ),
        Method(
            "last_layers",
            kind="partial",
            trainable_share=0.15,
            description="train only the last transformer blocks; saves just those tensors",
        ),
    ]


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: Any) -> dict[str, float] | None:
    if "token_f1" not in metrics:
        return None
    return {"token_f1": mean_token_f1(ctx.generations(), ctx.references())}


@hookimpl
def tunesmith_apply_method(name: str, model: Any, cfg: Any) -> Any:
    if name != "last_layers":
        return None
    method = cfg.method
    return last_layers.make_trainable(
        model, n_layers=method.get("n_layers", 1), train_head=method.get("train_head", False)
    )


@hookimpl
def tunesmith_save_method(name: str, model: Any, tokenizer: Any, path: Path) -> Path | None:
    if name != "last_layers":
        return None
    return last_layers.save_trained(model, tokenizer, path)


@hookimpl
def tunesmith_load_method(name: str, base_model: Any, path: Path) -> Any:
    if name != "last_layers":
        return None
    return last_layers.load_trained(base_model, path)

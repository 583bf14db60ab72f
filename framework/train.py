"""The train stage: apply the method, fit with a real ``lightning.Trainer``, save the result."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from framework.data import load_splits
from framework.errors import ConfigError
from framework.pipeline import to_container
from framework.run import Run, atomic_path, write_json

log = logging.getLogger(__name__)


def count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def _instantiate_all(node: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group (``None`` entries skipped)."""
    if not node:
        return []
    return [instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def build_trainer(run: Run) -> Any:
    """A ``lightning.Trainer`` from ``cfg.trainer``, ``cfg.logger`` and ``cfg.callbacks``."""
    import lightning.pytorch as pl

    cfg = run.cfg
    kwargs = to_container(cfg.trainer)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    for extra in run.hook.tunesmith_configure_callbacks(cfg=cfg, run=run):
        callbacks.extend(extra or [])
    loggers = _instantiate_all(cfg.get("logger")) or False
    try:
        return pl.Trainer(
            default_root_dir=str(run.dir), logger=loggers, callbacks=callbacks, **kwargs
        )
    except TypeError as exc:
        raise ConfigError(
            f"The trainer config has a key lightning.Trainer does not take: {exc}",
            where="trainer.*",
            hint="use the names of lightning.Trainer's arguments (trainer.max_steps=...).",
        ) from exc


def last_checkpoint(run: Run) -> Path | None:
    """The checkpoint to resume from, if an earlier attempt of this run left one."""
    path = run.dir / "checkpoints" / "last.ckpt"
    return path if path.exists() else None


def train(run: Run) -> None:
    """Run the train stage."""
    from framework.datamodule import FineTuneDataModule
    from framework.module import FineTuneModule

    cfg = run.cfg
    splits = load_splits(run)
    base, tokenizer = run.ensure_model()
    method = str(cfg.method.name)
    run.plugins.require("method", method)
    run.plugins.require("objective", str(cfg.objective))
    model = run.hook.tunesmith_apply_method(name=method, model=base, cfg=cfg)
    trainable, total = count_parameters(model)
    log.info(
        "method %s: %s trainable of %s parameters (%.2f%%)",
        method,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    run.metrics["parameters"] = {"trainable": trainable, "total": total}

    datamodule = FineTuneDataModule(splits, cfg)
    datamodule.connect(tokenizer, run.plugins)
    module = FineTuneModule(model, cfg, run.plugins)
    trainer = build_trainer(run)
    ckpt = last_checkpoint(run)
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)

    run.model, run.tokenizer, run.trained = model, tokenizer, True
    with atomic_path(run.artifact_dir) as tmp:
        tmp.mkdir()
        run.hook.tunesmith_save_method(
            name=method, model=model, tokenizer=tokenizer, path=tmp, cfg=cfg
        )
    write_json(run.dir / "train_summary.json", {"method": method, **run.metrics["parameters"]})
    plot_loss_curves(run)


def read_logged_metrics(run: Run) -> list[dict[str, str]]:
    """Rows of the CSV logger's ``metrics.csv`` for this run (empty if there is none)."""
    rows: list[dict[str, str]] = []
    for path in sorted(run.dir.glob("logs/**/metrics.csv")):
        with path.open(encoding="utf-8") as f:
            rows.extend(csv.DictReader(f))
    return rows


def plot_loss_curves(run: Run) -> Path:
    """Write ``loss_curve.png`` (train and validation loss against step)."""
    rows = read_logged_metrics(run)
    series: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
    for row in rows:
        for key, points in series.items():
            if row.get(key):
                points.append((int(row["step"]), float(row[key])))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if key == "val/loss" else None, label=key)
    if not any(series.values()):
        ax.text(
            0.5,
            0.5,
            "no loss was logged: the run was shorter than "
            f"trainer.log_every_n_steps={run.cfg.trainer.get('log_every_n_steps')}",
            ha="center",
            va="center",
            transform=ax.transAxes,
            wrap=True,
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"{run.cfg.model.name} / {run.cfg.method.name} / {run.cfg.data.name}")
    if any(series.values()):
        ax.legend()
    ax.grid(alpha=0.3)
    path = run.dir / "loss_curve.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path

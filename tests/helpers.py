"""Helpers for tests that train the tiny model in-process and look at the result."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from framework.run import Run


def loss_rows(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, train/loss)`` of every logged training step in ``run_dir``'s metrics.csv files."""
    rows = []
    for path in run_dir.glob("logs/**/metrics.csv"):
        with path.open() as f:
            rows += [
                (int(r["step"]), float(r["train/loss"]))
                for r in csv.DictReader(f)
                if r.get("train/loss")
            ]
    return sorted(rows)


def new_run(cfg: DictConfig) -> Run:
    """A fresh :class:`Run` on ``cfg``'s run directory (nothing in memory)."""
    from framework.manager import build_plugin_manager

    plugins = build_plugin_manager(extra=list(cfg.get("plugins") or []), entry_points=False)
    return Run(cfg=cfg, dir=Path(cfg.paths.run_dir), plugins=plugins)


def fit(cfg: DictConfig) -> Run:
    """Prepare the data and train, in this process; the run keeps the trained model."""
    from framework.data.prepare import prepare
    from framework.pipeline import seed_everything
    from framework.train.stage import train

    run = new_run(cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    seed_everything(int(cfg.seed))
    prepare(run)
    train(run)
    return run


def reload(cfg: DictConfig) -> Any:
    """The tuned model as a later stage loads it: base model + what the train stage saved."""
    model, _ = new_run(cfg).load_tuned()
    return model


def encoded(run: Run, split: str = "train") -> list[dict]:
    from framework.data.datamodule import FineTuneDataModule
    from framework.data.prepare import load_splits

    dm = FineTuneDataModule(load_splits(run), run.cfg)
    dm.connect(run.tokenizer, run.plugins)
    return dm.encode(split)


def batch_of(run: Run, split: str = "train", n: int = 8) -> dict[str, torch.Tensor]:
    """The first ``n`` encoded examples of ``split`` as a model input batch (no labels)."""
    from framework.data.datamodule import Collator

    batch = Collator(run.tokenizer.pad_token_id)(encoded(run, split)[:n])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def mean_loss(model: Any, run: Run, split: str = "train") -> float:
    """The objective's loss of ``model`` over the whole of ``split``, in one batch."""
    from framework.data.datamodule import Collator
    from framework.train.objective import compute_loss

    batch = Collator(run.tokenizer.pad_token_id)(encoded(run, split))
    model.eval()
    with torch.no_grad():
        loss = compute_loss(run.plugins, model, batch, run.cfg)
    return float(loss)

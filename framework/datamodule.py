"""The Lightning DataModule: tokenised splits, padding collate, deterministic order."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from framework.chat import IGNORE_INDEX
from framework.errors import DataError
from framework.manager import TunesmithPluginManager


class Collator:
    """Pad a list of encoded examples to the longest one in the batch (right padding)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            input_ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            attention_mask[i, :k] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class FineTuneDataModule(pl.LightningDataModule):
    """Serves the prepared splits as batches.

    Late facts (tokenizer, objective, max length) arrive through :meth:`connect`, once the
    model is built.
    """

    def __init__(self, splits: dict[str, list[dict]], cfg: DictConfig) -> None:
        super().__init__()
        self.splits = splits
        self.cfg = cfg
        self.encoded: dict[str, list[dict]] = {}
        self.tokenizer: Any = None
        self.plugins: TunesmithPluginManager | None = None

    def connect(self, tokenizer: Any, plugins: TunesmithPluginManager) -> None:
        self.tokenizer = tokenizer
        self.plugins = plugins

    def encode(self, split: str) -> list[dict]:
        """Tokenise ``split`` once (cached) through the objective's encode hook."""
        if split not in self.encoded:
            assert self.plugins is not None, "call connect() first"
            name = str(self.cfg.objective)
            self.plugins.require("objective", name)
            rows = []
            for ex in self.splits.get(split, []):
                enc = self.plugins.hook.tunesmith_encode_example(
                    name=name, example=ex, tokenizer=self.tokenizer, cfg=self.cfg
                )
                if enc is not None and any(label != IGNORE_INDEX for label in enc["labels"]):
                    rows.append(enc)
            self.encoded[split] = rows
        return self.encoded[split]

    def setup(self, stage: str | None = None) -> None:
        if not self.encode("train"):
            raise DataError(
                "No training example has a token to learn from after tokenisation.",
                where=f"data.max_length={self.cfg.data.max_length}",
                hint="raise data.max_length, or check that examples have answers.",
            )
        self.encode("val")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data_cfg = self.cfg.data
        generator = torch.Generator().manual_seed(int(self.cfg.seed))
        return DataLoader(
            self.encoded[split],
            batch_size=int(data_cfg.batch_size),
            shuffle=shuffle,
            generator=generator if shuffle else None,
            collate_fn=Collator(self.tokenizer.pad_token_id),
            num_workers=int(data_cfg.get("num_workers", 0)),
        )

    def train_dataloader(self) -> DataLoader:
        # Resumable mid-epoch with the same data order (see framework/sampler.py).
        from framework.sampler import ResumableDataLoader

        return ResumableDataLoader(
            self.encoded["train"],
            batch_size=int(self.cfg.data.batch_size),
            seed=int(self.cfg.seed),
            epoch=self.trainer.current_epoch if self.trainer is not None else 0,
            collate_fn=Collator(self.tokenizer.pad_token_id),
            num_workers=int(self.cfg.data.get("num_workers", 0)),
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.encoded.get("val") else []

"""The Lightning DataModule: tokenised splits, padded or packed batches, deterministic order."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from framework.data import token_cache
from framework.data.chat import IGNORE_INDEX
from framework.data.packing import LengthGroupedSampler, pack_rows
from framework.errors import ConfigError, DataError
from framework.manager import TunesmithPluginManager

log = logging.getLogger(__name__)


class Collator:
    """Collate encoded examples into a batch, padded or packed.

    Every batch holds ``input_ids``, ``labels`` and ``num_tokens`` (the count of real,
    non-pad tokens, computed here so that counting costs the training loop nothing). A
    padded batch adds ``attention_mask`` (right padding to the longest example); a packed
    batch adds ``position_ids`` instead, restarting at 0 for every example. A packed batch
    has no ``attention_mask`` on purpose: given one, transformers would let the examples of
    a row attend to each other.

    Args:
        pad_token_id: the id used for padding.
        packing: pack the examples of the batch into rows (see :func:`pack_rows`).
        pack_length: the most tokens a packed row may hold (a row is never shorter than the
            longest example of the batch).
    """

    def __init__(self, pad_token_id: int, packing: bool = False, pack_length: int = 0) -> None:
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.pack_length = int(pack_length or 0)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.pack(rows) if self.packing else self.pad(rows)

    def pad(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """One example per row, right-padded to the longest."""
        lengths = [len(r["input_ids"]) for r in rows]
        width, n = max(lengths), len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, (r, k) in enumerate(zip(rows, lengths, strict=True)):
            input_ids[i, :k] = torch.as_tensor(r["input_ids"])
            labels[i, :k] = torch.as_tensor(r["labels"])
            attention_mask[i, :k] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "num_tokens": torch.tensor(sum(lengths)),
        }

    def pack(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Several examples per row, each with its own positions; rows right-padded.

        The first label of every example is set to ``-100``: in a row it would otherwise
        be the target of the previous example's last token. (Unpacked, the first label is
        never a target either, so the loss is unchanged.) Pad tokens at the end of a row
        continue the last example's positions; being after it, they cannot affect it.
        """
        lengths = [len(r["input_ids"]) for r in rows]
        layout = pack_rows(lengths, max(self.pack_length, max(lengths)))
        width = max(sum(lengths[i] for i in row) for row in layout)
        n = len(layout)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        positions = torch.arange(width)
        for r, row in enumerate(layout):
            start = 0
            for i in row:
                k = lengths[i]
                input_ids[r, start : start + k] = torch.as_tensor(rows[i]["input_ids"])
                labels[r, start + 1 : start + k] = torch.as_tensor(rows[i]["labels"][1:])
                position_ids[r, start : start + k] = positions[:k]
                start += k
            if start < width:  # the pad tail continues the last example's positions
                last = position_ids[r, start - 1] + 1
                position_ids[r, start:] = positions[: width - start] + last
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "labels": labels,
            "num_tokens": torch.tensor(sum(lengths)),
        }


def _compact(key: str, value: Any) -> Any:
    if key in ("input_ids", "labels") and isinstance(value, list | tuple):
        return np.asarray(value, dtype=np.int32)
    return value


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
        self._setup_digest: str | None = None

    def connect(self, tokenizer: Any, plugins: TunesmithPluginManager) -> None:
        self.tokenizer = tokenizer
        self.plugins = plugins

    def encode(self, split: str) -> list[dict]:
        """Tokenise ``split`` once (cached) through the objective's encode hook.

        Token ids and labels are kept as int32 arrays: a quarter of the memory of Python
        lists, and batches are built from them by a copy, not element by element. With
        ``data.cache`` on, a split tokenised before under the same settings is read back
        from ``data.cache_dir/encoded`` (see :mod:`framework.data.token_cache`); a split the
        prepare stage of this process tokenised is taken from it, whatever ``data.cache``.
        """
        if split not in self.encoded:
            assert self.plugins is not None, "call connect() first"
            name = str(self.cfg.objective)
            self.plugins.require("objective", name)
            examples = self.splits.get(split, [])
            directory = token_cache.cache_dir(self.cfg)
            key = None
            if examples and (directory is not None or token_cache.has_memory()):
                key = token_cache.cache_key(examples, self._setup())
            path = directory / f"{key}.npz" if directory is not None and key else None
            # tokenised by this process's prepare stage?
            rows = token_cache.recall(key) if key else None
            if rows is None:
                rows = token_cache.load(path) if path is not None else None
            elif path is not None and not path.is_file():
                token_cache.save(path, rows)  # later runs read them back, as before
            if rows is None:
                rows = []
                for ex in examples:
                    enc = self.plugins.hook.tunesmith_encode_example(
                        name=name, example=ex, tokenizer=self.tokenizer, cfg=self.cfg
                    )
                    if enc is not None and max(enc["labels"], default=IGNORE_INDEX) > IGNORE_INDEX:
                        rows.append({k: _compact(k, v) for k, v in enc.items()})
                if path is not None:
                    token_cache.save(path, rows)
            self.encoded[split] = rows
        return self.encoded[split]

    def _setup(self) -> str:
        if self._setup_digest is None:
            self._setup_digest = token_cache.setup_digest(self.tokenizer, self.cfg, self.plugins)
        return self._setup_digest

    def setup(self, stage: str | None = None) -> None:
        if not self.encode("train"):
            raise DataError(
                "No training example has a token to learn from after tokenisation.",
                where=f"data.max_length={self.cfg.data.max_length}",
                hint="raise data.max_length, or check that examples have answers.",
            )
        self.encode("val")

    def packing_for(self, model: Any) -> bool:
        """Whether training batches are packed, from ``data.packing`` and ``model``.

        ``auto`` packs when the model keeps packed examples apart (checked once with a tiny
        forward pass) and pads otherwise (PEFT prompt learning, some remote-code models);
        ``true`` packs or stops with a clear error; ``false`` pads.
        """
        value = self.cfg.data.get("packing", False)
        if value not in (True, False, None, "auto"):
            raise ConfigError(
                f"data.packing must be auto, true or false, not '{value}'.",
                where=f"data.packing={value}",
                hint="auto packs when the model allows it; true always; false never.",
            )
        if not value:
            return False
        if model is None:
            return value is True
        from framework.train.losses import packing_supported

        ok, why = packing_supported(model)
        if ok:
            return True
        if value == "auto":
            log.info("data.packing=auto: batches are padded, not packed (%s)", why)
            return False
        raise ConfigError(
            f"data.packing=true, but this model cannot keep packed examples apart: {why}",
            where="data.packing=true",
            hint="set data.packing=auto (pack when possible) or data.packing=false.",
        )

    def _training_model(self) -> Any:
        module = getattr(self.trainer, "lightning_module", None) if self.trainer else None
        return getattr(module, "model", None)

    def collator(self, packing: bool | None = None) -> Collator:
        """The collate function ``data.packing`` and ``data.pack_length`` ask for."""
        data_cfg = self.cfg.data
        if packing is None:
            packing = self.packing_for(self._training_model())
        return Collator(
            self.tokenizer.pad_token_id,
            packing=packing,
            pack_length=int(data_cfg.get("pack_length") or data_cfg.get("max_length") or 0),
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data_cfg = self.cfg.data
        rows = self.encoded[split]
        batch_size = int(data_cfg.batch_size)
        lengths = [len(r["input_ids"]) for r in rows]
        order: dict[str, Any] = {}
        if not shuffle:
            # Longest first: less padding, and a batch too big for memory fails at once. The
            # order does not change a token-weighted loss or metric.
            order["sampler"] = sorted(range(len(rows)), key=lambda i: -lengths[i])
        elif bool(data_cfg.get("group_by_length", False)):
            order["sampler"] = LengthGroupedSampler(lengths, batch_size, int(self.cfg.seed))
        else:
            order["shuffle"] = True
            order["generator"] = torch.Generator().manual_seed(int(self.cfg.seed))
        return DataLoader(
            rows,
            batch_size=batch_size,
            # validation batches stay padded: callbacks read them as the model's usual input
            collate_fn=self.collator(packing=None if shuffle else False),
            num_workers=int(data_cfg.get("num_workers", 0)),
            **order,
        )

    def train_dataloader(self) -> DataLoader:
        if bool(self.cfg.data.get("group_by_length", False)):
            # Length-grouped order; an interrupted run resumes it at the epoch boundary.
            return self._loader("train", shuffle=True)
        # Resumable mid-epoch with the same data order (see framework/data/sampler.py).
        from framework.data.sampler import ResumableDataLoader

        return ResumableDataLoader(
            self.encoded["train"],
            batch_size=int(self.cfg.data.batch_size),
            seed=int(self.cfg.seed),
            epoch=self.trainer.current_epoch if self.trainer is not None else 0,
            collate_fn=self.collator(packing=None),  # packs rows when data.packing=true
            num_workers=int(self.cfg.data.get("num_workers", 0)),
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.encoded.get("val") else []

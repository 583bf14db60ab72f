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
from framework.data.collate import Collator, ObjectiveCollate
from framework.data.packing import LengthGroupedSampler
from framework.descriptors import Objective
from framework.errors import ConfigError, DataError
from framework.manager import TunesmithPluginManager
from framework.train.objective import describe_objective, objective_name

log = logging.getLogger(__name__)

__all__ = ["Collator", "FineTuneDataModule"]  # Collator lives in framework.data.collate


def _compact(key: str, value: Any, fields: tuple[str, ...] = ()) -> Any:
    """``input_ids``/``labels`` (lists of ints) as int32 arrays, and the objective's declared
    batch ``fields`` likewise (lists of ints as int32, of floats as float32)."""
    if not isinstance(value, list | tuple):
        return value
    if key in ("input_ids", "labels"):
        return np.asarray(value, dtype=np.int32)
    if key not in fields:
        return value
    arr = np.asarray(value)
    if arr.ndim != 1:
        return value
    if arr.dtype.kind in "iu" or arr.size == 0:
        return arr.astype(np.int32)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    return arr if arr.dtype.kind == "b" else value


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
        self._objective: Objective | None = None

    def connect(self, tokenizer: Any, plugins: TunesmithPluginManager) -> None:
        self.tokenizer = tokenizer
        self.plugins = plugins

    @property
    def objective(self) -> Objective:
        """What the objective declared (its batch fields, whether it may be packed...)."""
        if self._objective is None:
            assert self.plugins is not None, "call connect() first"
            self._objective = describe_objective(self.cfg, self.plugins)
        return self._objective

    def encode(self, split: str) -> list[dict]:
        """Tokenise ``split`` once (cached) through the objective's encode hook.

        Token ids and labels are kept as int32 arrays: a quarter of the memory of Python
        lists, and batches are built from them by a copy, not element by element; so are the
        fields the objective declares in ``Objective.batch_fields``. With ``data.cache`` on,
        a split tokenised before under the same settings is read back from
        ``data.cache_dir/encoded`` (see :mod:`framework.data.token_cache`); a split the
        prepare stage of this process tokenised is taken from it, whatever ``data.cache``.
        """
        if split not in self.encoded:
            assert self.plugins is not None, "call connect() first"
            name, fields = self.objective.name, tuple(self.objective.batch_fields)
            examples = self.splits.get(split, [])
            directory = token_cache.cache_dir(self.cfg)
            key = None
            if examples and (directory is not None or token_cache.has_memory()):
                key = token_cache.cache_key(examples, self._setup())
            path = directory / f"{key}.npz" if directory is not None and key else None
            # tokenised by this process's prepare stage?
            rows = token_cache.recall(key) if key else None
            if rows is None:
                rows = token_cache.load(path, fields) if path is not None else None
            elif path is not None and not path.is_file():
                token_cache.save(path, rows, fields)  # later runs read them back, as before
            if rows is None:
                rows = []
                encode = self.plugins.caller("tunesmith_encode_example", "objective", name)
                for ex in examples:
                    enc = encode(name=name, example=ex, tokenizer=self.tokenizer, cfg=self.cfg)
                    if enc is not None and max(enc["labels"], default=IGNORE_INDEX) > IGNORE_INDEX:
                        rows.append({k: _compact(k, v, fields) for k, v in enc.items()})
                if path is not None:
                    token_cache.save(path, rows, fields)
            self.encoded[split] = rows
        return self.encoded[split]

    def _setup(self) -> str:
        if self._setup_digest is None:
            self._setup_digest = token_cache.setup_digest(
                self.tokenizer, self.cfg, self.plugins, self.objective.batch_fields
            )
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

        ``auto`` packs when the objective allows it (``Objective.packing``) and the model
        keeps packed examples apart (checked once with a tiny forward pass), and pads
        otherwise (PEFT prompt learning, some remote-code models, a pairwise objective);
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
        if self.plugins is not None and not self.objective.packing:
            name = self.objective.name
            if value == "auto":
                log.info("data.packing=auto: batches are padded (objective %s is not packed)", name)
                return False
            raise ConfigError(
                f"data.packing=true, but the objective '{name}' cannot be trained on packed "
                "batches (its plugin declares packing=False).",
                where=f"data.packing=true, objective={name}",
                hint="set data.packing=auto (pads for this objective) or data.packing=false.",
            )
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
            custom=self._objective_collate(),
        )

    def _objective_collate(self) -> ObjectiveCollate | None:
        """The ``tunesmith_collate`` hook for this objective, when any plugin implements it."""
        if self.plugins is None:
            return None
        name = objective_name(self.cfg)
        hook = self.plugins.caller("tunesmith_collate", "objective", str(name))
        if not hook.get_hookimpls():
            return None
        return ObjectiveCollate(
            hook,
            name,
            self.tokenizer.pad_token_id,
            self.cfg,
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
        from framework.data.sampler import ResumableDataLoader, ShardedEpochSampler

        trainer = self.trainer
        sampler = None
        if (
            trainer is not None
            and trainer.world_size > 1
            and bool(self.cfg.trainer.get("use_distributed_sampler", True))
        ):  # several processes: each its share of the one-process order
            sampler = ShardedEpochSampler(
                len(self.encoded["train"]),
                int(self.cfg.seed),
                num_replicas=trainer.world_size,
                rank=trainer.global_rank,
            )
            sampler.set_epoch(trainer.current_epoch)
        return ResumableDataLoader(
            self.encoded["train"],
            batch_size=int(self.cfg.data.batch_size),
            seed=int(self.cfg.seed),
            epoch=trainer.current_epoch if trainer is not None else 0,
            sampler=sampler,
            collate_fn=self.collator(packing=None),  # packs rows when data.packing=true
            num_workers=int(self.cfg.data.get("num_workers", 0)),
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.encoded.get("val") else []

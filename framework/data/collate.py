"""How encoded examples become batches: the default :class:`Collator` and padding helpers.

An objective whose examples carry more than ``input_ids`` and ``labels`` (a preference
pair: a chosen and a rejected answer) batches them in its ``tunesmith_collate`` hook, with
the helpers here::

    from framework.data.collate import pad_ids, pad_labels

    ids, mask = pad_ids([r["input_ids"] for r in rows], pad_token_id)
    labels = pad_labels([r["labels"] for r in rows], width=ids.shape[1])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from framework.data.chat import IGNORE_INDEX
from framework.data.packing import pack_rows
from framework.errors import TunesmithError


def pad(seqs: Sequence[Sequence[int]], value: int, width: int | None = None) -> torch.Tensor:
    """Right-pad ``seqs`` (lists or arrays of ints) with ``value`` into a ``long`` tensor.

    Args:
        seqs: the sequences, one per row.
        value: the padding value.
        width: the width of the result (at least the longest sequence); ``None``: the
            longest.
    """
    lengths = [len(s) for s in seqs]
    longest = max(lengths, default=0)
    width = longest if width is None else int(width)
    if width < longest:
        raise ValueError(f"width {width} is shorter than the longest sequence ({longest})")
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, (s, k) in enumerate(zip(seqs, lengths, strict=True)):
        if k:
            out[i, :k] = torch.as_tensor(s)
    return out


def pad_ids(
    seqs: Sequence[Sequence[int]], pad_token_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids right-padded with ``pad_token_id``, and their attention mask (1 = real token).

    Args:
        seqs: the token ids of each row.
        pad_token_id: the tokenizer's padding id.
        width: the width of the result; ``None``: the longest sequence.

    Returns:
        ``(input_ids, attention_mask)``, both ``long`` of shape ``(len(seqs), width)``.
    """
    ids = pad(seqs, pad_token_id, width)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        mask[i, : len(s)] = 1
    return ids, mask


def pad_labels(seqs: Sequence[Sequence[int]], width: int | None = None) -> torch.Tensor:
    """Labels right-padded with ``-100`` (no loss on padding)."""
    return pad(seqs, IGNORE_INDEX, width)


def is_padded_batch(batch: Any) -> bool:
    """Whether ``batch`` is the default padded batch: ``input_ids``, ``attention_mask`` and
    ``labels`` tensors of one 2-D shape (what the validation loader gives by default)."""
    if not isinstance(batch, Mapping):
        return False
    parts = [batch.get(k) for k in ("input_ids", "attention_mask", "labels")]
    if not all(isinstance(p, torch.Tensor) and p.dim() == 2 for p in parts):
        return False
    return parts[0].shape == parts[1].shape == parts[2].shape


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
        custom: tried first on every batch (the objective's ``tunesmith_collate`` hook, see
            :class:`ObjectiveCollate`); when it returns ``None`` the batch is padded or
            packed as above.
    """

    def __init__(
        self,
        pad_token_id: int,
        packing: bool = False,
        pack_length: int = 0,
        custom: Callable[[list[dict[str, Any]]], dict[str, Any] | None] | None = None,
    ) -> None:
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.pack_length = int(pack_length or 0)
        self.custom = custom

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.custom is not None:
            batch = self.custom(rows)
            if batch is not None:
                return batch
        return self.pack(rows) if self.packing else self.pad(rows)

    def pad(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """One example per row, right-padded to the longest."""
        input_ids, attention_mask = pad_ids([r["input_ids"] for r in rows], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": pad_labels([r["labels"] for r in rows], width=input_ids.shape[1]),
            "num_tokens": torch.tensor(sum(len(r["input_ids"]) for r in rows)),
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


class ObjectiveCollate:
    """The objective's ``tunesmith_collate`` hook as a :class:`Collator`'s ``custom`` step.

    Args:
        hook: ``plugins.hook.tunesmith_collate``.
        name: the objective (``cfg.objective.name``).
        pad_token_id: the tokenizer's padding id.
        cfg: the whole run config.
    """

    def __init__(self, hook: Any, name: str, pad_token_id: int, cfg: Any) -> None:
        self.hook, self.name, self.pad_token_id, self.cfg = hook, name, pad_token_id, cfg

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        batch = self.hook(name=self.name, rows=rows, pad_token_id=self.pad_token_id, cfg=self.cfg)
        if batch is None:
            return None
        if not isinstance(batch, Mapping) or "num_tokens" not in batch:
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise TunesmithError(
                f"The tunesmith_collate hook of the objective '{self.name}' returned a batch "
                f"without 'num_tokens' (got {got}).",
                where=f"objective={self.name}",
                hint="return a dict of tensors with num_tokens, the count of real (non-pad) "
                "tokens in the batch; or None for the default collator.",
            )
        return dict(batch)

"""Packing and length-grouped batching: less padding, the same training.

Padding every batch to its longest example wastes about half of the tokens on data of
varied length. Two remedies, each selected in the ``data`` config group:

* **packing** (``data.packing=true``): the examples of a batch are laid end to end in rows
  of at most ``data.pack_length`` tokens, with as little padding as can be. Every example
  keeps its own ``position_ids`` (restarting at 0) and the model attends only within an
  example (the attention mask is block-diagonal: transformers builds it from the restarting
  positions). Each optimizer step sees the same examples and the same loss as the padded
  batch would; only the pad tokens are gone.
* **length-grouped batching** (``data.group_by_length=true``): batches are drawn from
  shuffled "megabatches" sorted by length, so examples of similar length share a batch.
  The order changes (it is still shuffled with the seed); each example is still seen once
  per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler


def pack_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Lay examples out in rows of at most ``budget`` tokens, with as little padding as can be.

    The rows of a batch are padded to the longest row, so what costs is ``rows x width``.
    For each row count from the fewest that can hold the tokens to the most that can help,
    the examples go longest first to the least-filled row they fit in (rows come out
    even); the layout with the fewest padded cells wins, the narrower one on a tie. An
    example longer than ``budget`` gets a row of its own.

    Args:
        lengths: the token count of each example.
        budget: the most tokens a row may hold.

    Returns:
        The rows, each a list of indices into ``lengths``, in the order of ``lengths``.
    """
    if not lengths:
        return []
    total, longest = sum(lengths), max(lengths)
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    fewest = max(1, math.ceil(total / max(budget, 1)))
    most = max(fewest, min(len(lengths), math.ceil(total / longest) + 1))
    best: tuple[int, int, list[list[int]]] | None = None
    for n_rows in range(fewest, most + 1):
        rows = _balanced(order, lengths, n_rows, max(budget, 1))
        width = max(sum(lengths[i] for i in row) for row in rows)
        key = (len(rows) * width, width)
        if best is None or key < best[:2]:
            best = (*key, rows)
    assert best is not None
    return sorted((sorted(row) for row in best[2]), key=lambda row: row[0])


def _balanced(
    order: list[int], lengths: Sequence[int], n_rows: int, budget: int
) -> list[list[int]]:
    """Longest first into the least-filled of ``n_rows`` rows that has room (or a new row)."""
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    loads = [0] * n_rows
    for i in order:
        fits = [r for r in range(len(rows)) if loads[r] + lengths[i] <= budget]
        if fits:
            r = min(fits, key=loads.__getitem__)
        else:
            rows.append([])
            loads.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        loads[r] += lengths[i]
    return [row for row in rows if row]


class LengthGroupedSampler(Sampler[int]):
    """Shuffled batches of examples of similar length; every example once per epoch.

    Each epoch: shuffle all indices with ``seed + epoch``; cut them into megabatches of
    ``batch_size * megabatch_batches`` examples; sort each megabatch by length; cut it into
    batches; shuffle the order of those batches (same generator). The last, short batch
    (when the count is not a multiple of ``batch_size``) stays last, so the indices can be
    read ``batch_size`` at a time by an ordinary ``DataLoader``.

    Lightning calls :meth:`set_epoch` before every epoch.

    Args:
        lengths: the token count of each example.
        batch_size: examples per batch.
        seed: the run's seed.
        megabatch_batches: batches per megabatch (larger: less padding, less randomness).
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, megabatch_batches: int = 50
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = max(1, int(batch_size))
        self.seed = int(seed)
        self.megabatch = self.batch_size * max(1, int(megabatch_batches))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch``, in the order they are served."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        full: list[list[int]] = []
        rest: list[list[int]] = []
        for m in range(0, len(order), self.megabatch):
            mega = sorted(order[m : m + self.megabatch], key=lambda i: -self.lengths[i])
            for b in range(0, len(mega), self.batch_size):
                batch = mega[b : b + self.batch_size]
                (full if len(batch) == self.batch_size else rest).append(batch)
        shuffled = torch.randperm(len(full), generator=generator).tolist()
        return [full[i] for i in shuffled] + rest

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self.batches(self.epoch) for i in batch)

    def __len__(self) -> int:
        return len(self.lengths)


def check_packing_isolation(model: Any) -> None:
    """Raise unless ``model`` keeps packed examples apart when given restarting positions.

    Runs ``model`` (a decoder or a causal LM, no gradient) on two rows that each pack two
    examples: the second example is the same in both rows, the first differs. If the model
    honours ``position_ids`` as sequence boundaries, the second example's outputs are the
    same in both rows; if its tokens could see the first example, they differ.

    Raises:
        ConfigError: the model lets packed examples attend to each other.
    """
    from framework.errors import ConfigError

    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 8:
        return
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(4, vocab, (2, 5), generator=generator)
    second = torch.randint(4, vocab, (1, 6), generator=generator).expand(2, -1)
    input_ids = torch.cat([first, second], dim=1).to(device)
    position_ids = torch.cat([torch.arange(5), torch.arange(6)]).expand(2, -1).to(device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # no dropout
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    finally:
        for m, training in modes:
            m.training = training
    hidden = out.logits if hasattr(out, "logits") else out.last_hidden_state
    tail = hidden[:, 5:].float()
    scale = tail.abs().max().clamp_min(1e-6)
    if float((tail[0] - tail[1]).abs().max() / scale) > 1e-3:
        raise ConfigError(
            f"{type(model).__name__} lets packed examples attend to each other: it does not "
            "treat restarting position_ids as sequence boundaries.",
            where="data.packing=true",
            hint="set data.packing=false (data.group_by_length=true also cuts padding), or "
            "use a transformers model whose attention honours packed position_ids.",
        )

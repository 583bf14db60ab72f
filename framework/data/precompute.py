"""Values an objective computes once per example before training (``tunesmith_precompute``).

An objective that compares against a reference model (DPO, KTO) may compute the reference's
log-probabilities once instead of at every step (``objective.precompute_ref=true``): no
reference forward pass per step, and under ``method=full`` no frozen copy of the model. It
declares the fields in ``Objective.precomputed``; :func:`precompute` asks its hook for them
with the model as training starts, adds them to the encoded rows and stores them:

* in the run's ``data/precomputed/<split>-<key>.npz`` (a resumed run reads them back, so it
  never recomputes with weights that have trained);
* in ``data.cache_dir/encoded/<key>.npz`` when ``data.cache`` is on (a later run on the same
  data, settings, model and method reads them).

The key hashes the encoded examples (the token cache's key), the objective and its options,
the model and the method config (what decides the reference).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from framework.data import token_cache

log = logging.getLogger(__name__)


def precompute_key(datamodule: Any, split: str) -> str:
    """The name of ``split``'s precomputed values under this run's settings."""
    cfg = datamodule.cfg
    examples = datamodule.splits.get(split, [])
    setup = token_cache.setup_digest(
        datamodule.tokenizer, cfg, datamodule.plugins, datamodule.objective.batch_fields
    )
    h = hashlib.sha256(token_cache.cache_key(examples, setup).encode())
    h.update(json.dumps(list(datamodule.objective.precomputed)).encode())
    method = OmegaConf.to_container(cfg.method, resolve=True)
    h.update(json.dumps(method, sort_keys=True, default=str).encode())
    h.update(str(int(cfg.seed)).encode())
    h.update(
        datamodule.plugins.code_digest(
            ("tunesmith_precompute", "tunesmith_encode_example"), modules=(__name__,)
        ).encode()
    )
    return f"pre-{h.hexdigest()[:24]}"


def _save(path: Path, values: list[dict[str, Any]], fields: tuple[str, ...]) -> None:
    from framework.run import atomic_path

    arrays: dict[str, np.ndarray] = {}
    for key in fields:
        items = [v[key] for v in values]
        if all(isinstance(x, int | float | np.integer | np.floating) for x in items):
            arrays[f"field__{key}"] = np.asarray(items, dtype=np.float64)
        else:
            seqs = [np.asarray(x) for x in items]
            lengths = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
            arrays[f"offsets__{key}"] = np.concatenate([[0], np.cumsum(lengths)])
            arrays[f"field__{key}"] = (
                np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, count=np.asarray(len(values)), **arrays)
    except OSError as exc:  # a read-only or full cache must not fail the run
        log.warning("could not store precomputed values in %s: %s", path.parent, exc)


def _load(path: Path, fields: tuple[str, ...], n: int) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if int(z["count"]) != n:
                return None
            out: list[dict[str, Any]] = [{} for _ in range(n)]
            for key in fields:
                if f"field__{key}" not in z.files:
                    return None
                values = z[f"field__{key}"]
                if f"offsets__{key}" in z.files:
                    edges = z[f"offsets__{key}"].tolist()
                    items: list[Any] = [
                        values[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)
                    ]
                else:
                    items = values.tolist()
                for row, item in zip(out, items, strict=True):
                    row[key] = item
            return out
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable precomputed values %s: %s", path, exc)
        return None


def _declared(values: list[dict[str, Any]], fields: tuple[str, ...], name: str) -> None:
    from framework.errors import TunesmithError

    extra = sorted({k for v in values for k in v} - set(fields))
    if extra or any(set(v) != set(fields) for v in values):
        raise TunesmithError(
            f"The tunesmith_precompute hook of the objective '{name}' returned fields "
            f"{extra or 'other than'} its declared Objective.precomputed {list(fields)}.",
            where=f"objective={name}",
            hint="return one dict per row with exactly the declared fields.",
        )


def precompute(datamodule: Any, model: Any, run_dir: Path | None) -> bool:
    """Add the objective's precomputed fields to the encoded train and val rows.

    Args:
        datamodule: a connected :class:`framework.data.datamodule.FineTuneDataModule`.
        model: the model as training starts (before a checkpoint is restored).
        run_dir: the run directory (values are kept in its ``data/precomputed``), or ``None``.

    Returns:
        Whether values were precomputed (``False``: the objective declares none, or its hook
        returned ``None``, e.g. ``objective.precompute_ref=false``).
    """
    from framework.train.objective import objective_options, starting_model

    info = datamodule.objective
    fields = tuple(info.precomputed)
    hook = datamodule.plugins.hook.tunesmith_precompute
    if not fields or not hook.get_hookimpls():
        return False
    options = objective_options(datamodule.cfg, info)
    shared = token_cache.cache_dir(datamodule.cfg)
    done = False
    for split in ("train", "val"):
        rows = datamodule.encode(split)
        if not rows:
            continue
        key = precompute_key(datamodule, split)
        own = run_dir / "data" / "precomputed" / f"{split}-{key}.npz" if run_dir else None
        common = shared / f"{key}.npz" if shared is not None else None
        values = None
        for path in (own, common):
            if path is not None and values is None:
                values = _load(path, fields, len(rows))
                if values is not None:
                    log.info(
                        "precomputed %s values of the %s split read from %s", info.name, split, path
                    )
        if values is None:
            with starting_model(model) as reference:
                values = hook(
                    name=info.name,
                    rows=rows,
                    reference=reference,
                    pad_token_id=datamodule.tokenizer.pad_token_id,
                    cfg=datamodule.cfg,
                    options=options,
                )
            if values is None:
                return done
            _declared(values, fields, info.name)
            log.info("precomputed %s for %d %s examples", ", ".join(fields), len(rows), split)
        for path in (own, common):
            if path is not None and not path.is_file():
                _save(path, values, fields)
        for row, extra in zip(rows, values, strict=True):
            row.update(
                {
                    k: np.asarray(v, dtype=np.int32) if isinstance(v, list | np.ndarray) else v
                    for k, v in extra.items()
                }
            )
        done = True
    return done

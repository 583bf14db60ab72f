"""A cache of tokenised splits, so a re-run or a sweep over the same data tokenises once.

The key is a hash of everything that decides the tokens: the examples (all their fields, in
order), the objective, the ``data`` and ``model`` config (batching keys aside), the
tokenizer (its vocabulary, merges, special tokens and chat template) and the source of the
code that encodes (the packages of the plugins implementing ``tunesmith_encode_example``,
with their distribution versions, and ``framework.data.chat`` / ``framework.data.encoding``).
Entries live under ``data.cache_dir/encoded`` and are used when ``data.cache`` is true, like
the prepared-data cache.

Rows made of ``input_ids``, ``labels`` and the fields the objective declares in
``Objective.batch_fields`` are cached (a field holds a sequence per example, e.g.
``rejected_input_ids``, or one number per example); an objective that returns other keys is
tokenised every run.

Besides the files, one process keeps the splits its prepare stage tokenised in memory
(:func:`remember` / :func:`recall`, under the same key), so the train stage that follows in
that process does not tokenise them again, even with ``data.cache`` off.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: ``data`` keys that change how batches are formed, not the tokens.
BATCHING_KEYS = ("batch_size", "num_workers", "packing", "pack_length", "group_by_length")
#: Bump when the stored format changes.
FORMAT = 1
#: The keys every cached row has; an objective's ``batch_fields`` are cached besides them.
CACHED_KEYS = {"input_ids", "labels"}


def _tokenizer_digest(tokenizer: Any) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are per-call settings the last call leaves behind (and
        # transformers sets them again before every call): clear them so they do not count.
        backend.no_truncation()
        backend.no_padding()
        h.update(backend.to_str().encode("utf-8"))
    else:  # a slow tokenizer: its vocabulary and special tokens
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    h.update(str(getattr(tokenizer, "chat_template", "")).encode("utf-8"))
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True).encode())
    for name in ("padding_side", "truncation_side"):
        h.update(str(getattr(tokenizer, name, "")).encode())
    return h.hexdigest()


def _code_digest(plugins: Any) -> str:
    return plugins.code_digest(
        ("tunesmith_encode_example",), modules=("framework.data.chat", "framework.data.encoding")
    )


def setup_digest(
    tokenizer: Any, cfg: DictConfig, plugins: Any, fields: tuple[str, ...] | list[str] = ()
) -> str:
    """A hash of what decides the tokens besides the examples (computed once per run).

    Args:
        tokenizer: the model's tokenizer.
        cfg: the whole run config (``data``, ``model`` and ``objective`` with its options).
        plugins: the plugin manager (the source of the encode hooks counts).
        fields: the objective's ``batch_fields``.
    """
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    for key in (*BATCHING_KEYS, "cache", "cache_dir"):
        data.pop(key, None)
    h = hashlib.sha256(f"encoded-v{FORMAT}".encode())
    objective = OmegaConf.to_container(cfg.objective, resolve=True)
    assert isinstance(objective, dict)
    h.update(str(objective.pop("name")).encode())
    if objective:  # the objective's options
        h.update(json.dumps(objective, sort_keys=True, default=str).encode())
    if fields:
        h.update(json.dumps(list(fields)).encode())
    h.update(json.dumps(data, sort_keys=True, default=str).encode())
    model = OmegaConf.to_container(cfg.get("model") or {}, resolve=True)
    model.pop("compile", None)  # how training runs, not what it reads
    h.update(json.dumps(model, sort_keys=True, default=str).encode())
    h.update(_tokenizer_digest(tokenizer).encode())
    h.update(_code_digest(plugins).encode())
    return h.hexdigest()


def cache_key(examples: list[dict], setup: str) -> str:
    """The name of the tokenised form of ``examples`` (``setup`` from :func:`setup_digest`)."""
    h = hashlib.sha256(setup.encode())
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:24]


#: Rows the prepare stage of this process tokenised, by :func:`cache_key` (one prepare's worth).
_memory: dict[str, list[dict]] = {}


def compact(enc: dict) -> dict:
    """``enc`` with ``input_ids`` and ``labels`` as int32 arrays (a quarter of the memory of
    Python lists; batches are built from them by copies)."""
    return {
        k: np.asarray(v, dtype=np.int32) if k in CACHED_KEYS and isinstance(v, list | tuple) else v
        for k, v in enc.items()
    }


def remember(entries: dict[str, list[dict]]) -> None:
    """Keep tokenised rows in memory for a later stage of this process (by cache key);
    replaces what an earlier call kept."""
    _memory.clear()
    _memory.update(entries)


def has_memory() -> bool:
    """Whether :func:`remember` kept rows that no stage has taken yet."""
    return bool(_memory)


def recall(key: str) -> list[dict] | None:
    """The rows :func:`remember` kept under ``key`` (handed over once), or ``None``."""
    return _memory.pop(key, None)


def cache_dir(cfg: DictConfig) -> Path | None:
    """Where tokenised splits are kept, or ``None`` when ``data.cache`` is off."""
    data = cfg.data
    if not data.get("cache", True) or not data.get("cache_dir"):
        return None
    return Path(str(data.cache_dir)).expanduser() / "encoded"


def _field_kind(rows: list[dict], key: str) -> str | None:
    """``seq`` when every row holds a 1-D array under ``key``, ``one`` when every row holds
    one number, else ``None`` (not cacheable)."""
    values = [r[key] for r in rows]
    if all(isinstance(v, np.ndarray) and v.ndim == 1 for v in values):
        return "seq"
    if all(isinstance(v, bool | int | float | np.bool_ | np.integer | np.floating) for v in values):
        return "one"
    return None


def load(path: Path, fields: tuple[str, ...] | list[str] = ()) -> list[dict] | None:
    """The rows stored at ``path``, or ``None`` if there are none (or they cannot be read).

    Args:
        path: the entry.
        fields: the objective's ``batch_fields``, read besides ``input_ids`` and ``labels``
            (an entry without one of them is no hit).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            ids, labels, offsets = z["input_ids"], z["labels"], z["offsets"]
            extra = {}
            for key in fields:
                values = z[f"field__{key}"]
                bounds = z[f"offsets__{key}"] if f"offsets__{key}" in z.files else None
                extra[key] = (values, bounds)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring an unreadable token cache entry %s: %s", path, exc)
        return None
    rows = [
        {"input_ids": ids[a:b], "labels": labels[a:b]}
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]
    for key, (values, bounds) in extra.items():
        if bounds is None:
            items = values.tolist()
        else:
            edges = bounds.tolist()
            items = [values[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]
        if len(items) != len(rows):
            log.warning("ignoring a token cache entry with a short field %s: %s", key, path)
            return None
        for row, item in zip(rows, items, strict=True):
            row[key] = item
    return rows


def _ragged(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
    if values.dtype.kind in "iu":
        values = values.astype(np.int32)
    return values, offsets


def save(path: Path, rows: list[dict], fields: tuple[str, ...] | list[str] = ()) -> None:
    """Store ``rows`` at ``path`` (atomically).

    Args:
        path: the entry.
        rows: the encoded examples.
        fields: the objective's ``batch_fields``, stored besides ``input_ids`` and
            ``labels``. Rows with other keys, or a field that is neither a sequence nor one
            number per row, are not cached.
    """
    keys = CACHED_KEYS | set(fields)
    if not rows or any(set(r) != keys for r in rows):
        return
    arrays: dict[str, np.ndarray] = {}
    for key in fields:
        kind = _field_kind(rows, key)
        if kind is None:
            return
        if kind == "seq":
            arrays[f"field__{key}"], arrays[f"offsets__{key}"] = _ragged([r[key] for r in rows])
        else:
            arrays[f"field__{key}"] = np.asarray([r[key] for r in rows])
    from framework.run import atomic_path

    ids, offsets = _ragged([np.asarray(r["input_ids"]) for r in rows])
    labels, _ = _ragged([np.asarray(r["labels"]) for r in rows])
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(
                f,
                input_ids=ids.astype(np.int32),
                labels=labels.astype(np.int32),
                offsets=offsets,
                **arrays,
            )
    except OSError as exc:  # a read-only or full cache must not fail the run
        log.warning("could not store tokenised data in %s: %s", path.parent, exc)

"""Cleaning steps of the prepare stage, each switched in ``data.clean`` and counted.

Every step takes the examples in order and returns the ones it keeps plus a record of each
one it removed (written to ``data/removed.jsonl``), so nothing disappears unseen. Steps that
compare examples keep the *first* of a group of twins; the prepare stage orders examples so
that user-given test and validation examples come first, and so win over a training twin.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from framework.errors import ConfigError

_SPACES = re.compile(r"\s+")


def content(example: Mapping[str, Any]) -> dict[str, Any]:
    """The example without its bookkeeping fields (those starting with ``_``)."""
    return {k: v for k, v in example.items() if not k.startswith("_")}


def example_key(example: Mapping[str, Any]) -> str:
    """A content hash of an example (bookkeeping fields ignored): equal text, equal key."""
    return hashlib.sha256(
        json.dumps(content(example), sort_keys=True, ensure_ascii=False).encode("utf-8")
    ).hexdigest()


def content_hash(rows: list[dict]) -> str:
    """A hash of a list of examples' content, in order, ignoring bookkeeping fields.

    Equal on every machine for the same inputs and config, wherever the files lie.
    """
    h = hashlib.sha256()
    for row in rows:
        h.update(example_key(row).encode())
    return h.hexdigest()


def example_text(example: Mapping[str, Any]) -> str:
    """All the text of an example in one string (roles included), for near-dup comparison."""
    parts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, Mapping):
            for k in sorted(value):
                walk(value[k])

    walk(content(example))
    return "\n".join(parts)


def removal(example: Mapping[str, Any], step: str, message: str, **extra: Any) -> dict[str, Any]:
    """One line of ``removed.jsonl``: which example, which step, why."""
    return {"step": step, "source": example.get("_source"), "message": message, **extra}


# ----------------------------------------------------------------------------- normalise


def normalize_text(value: Any, form: str = "NFC") -> Any:
    """Unicode-normalise (``form``), unify line ends and trim every string inside an example.

    Bookkeeping fields (``_source``...) are left alone.
    """
    if isinstance(value, str):
        text = unicodedata.normalize(form, value) if form else value
        return text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if isinstance(value, list):
        return [normalize_text(v, form) for v in value]
    if isinstance(value, dict):
        return {
            k: v if str(k).startswith("_") else normalize_text(v, form) for k, v in value.items()
        }
    return value


def normalize(examples: list[dict], form: Any) -> tuple[list[dict], int]:
    """Normalise every example.

    Args:
        examples: the examples.
        form: a Unicode normal form (``NFC``, ``NFKC``, ``NFD``, ``NFKD``); ``True`` is NFC.

    Returns:
        ``(examples, how many changed)``.
    """
    form = "NFC" if form is True else str(form).upper()
    if form not in ("NFC", "NFKC", "NFD", "NFKD"):
        raise ConfigError(
            f"Unknown Unicode normal form '{form}'.",
            where="data.clean.normalize",
            hint="use NFC (the default: keeps full-width punctuation), NFKC, or false to skip.",
        )
    out, changed = [], 0
    for e in examples:
        n = normalize_text(e, form)
        changed += n != e
        out.append(n)
    return out, changed


# ----------------------------------------------------------------------------- dedup


def exact_dedup(examples: list[dict]) -> tuple[list[dict], list[dict]]:
    """Drop examples whose content equals an earlier one's."""
    first: dict[str, str | None] = {}
    kept, removed = [], []
    for e in examples:
        key = example_key(e)
        if key in first:
            removed.append(
                removal(e, "dedup", "exact duplicate", duplicate_of=first[key], similarity=1.0)
            )
            continue
        first[key] = e.get("_source")
        kept.append(e)
    return kept, removed


#: Odd multipliers of the 64-bit finaliser (splitmix64) that spreads shingle hashes.
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK32 = 0xFFFFFFFF


def shingle_hashes(text: str, n: int) -> Any:
    """32-bit hashes of the character ``n``-grams of ``text``, one per position (a repeated
    n-gram repeats its hash, which a minimum does not mind).

    The text is lower-cased with runs of whitespace as one space; characters rather than words,
    so text without spaces (Chinese, Japanese) works too. A text of ``n`` characters or fewer is
    one n-gram.

    Computed with numpy over the code points (a polynomial hash of each window, then a mixing
    step), so a long text costs a few array operations instead of one Python call per n-gram.
    Deterministic: equal on every machine and in every process.
    """
    import numpy as np

    text = _SPACES.sub(" ", text.lower()).strip()
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    width = max(1, len(codes) - n + 1)
    h = np.zeros(width, dtype=np.uint64)
    for k in range(min(n, len(codes))):  # h = sum codes[i + k] * 1000003^(n-1-k), mod 2^64
        h = h * np.uint64(1000003) + codes[k : k + width]
    h ^= h >> np.uint64(30)
    h *= np.uint64(_MIX1)
    h ^= h >> np.uint64(27)
    h *= np.uint64(_MIX2)
    h ^= h >> np.uint64(31)
    return (h & np.uint64(_MASK32)).astype(np.uint32)


def minhash_signatures(texts: list[str], ngram: int, num_perm: int, seed: int = 1) -> Any:
    """MinHash signatures, one row of ``num_perm`` values per text.

    Each permutation is ``h -> (a * h + b) mod 2^32`` with an odd ``a`` (a bijection of 32-bit
    values; uint32 arithmetic wraps exactly so), drawn from a generator seeded with ``seed``.
    Texts are processed in chunks through one reused ``(num_perm x n-grams)`` buffer.
    """
    import numpy as np

    gen = np.random.default_rng(seed)
    a = (gen.integers(0, 1 << 31, num_perm, dtype=np.uint64) * 2 + 1).astype(np.uint32)[:, None]
    b = gen.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)[:, None]
    hashes = [shingle_hashes(t, ngram) for t in texts]
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    budget = 1 << 15  # n-grams per chunk: a 16 MB buffer at 128 permutations
    buffer = np.empty((num_perm, max(budget, max((len(h) for h in hashes), default=1))), np.uint32)
    i = 0
    while i < len(hashes):
        first, total = i, 0
        while i < len(hashes) and (i == first or total + len(hashes[i]) <= budget):
            total += len(hashes[i])
            i += 1
        chunk = buffer[:, :total]
        np.multiply(a, np.concatenate(hashes[first:i])[None, :], out=chunk)
        chunk += b
        starts = np.cumsum([0] + [len(h) for h in hashes[first : i - 1]])
        out[first:i] = np.minimum.reduceat(chunk, starts, axis=1).T
    return out


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows per band)`` whose banding best separates pairs above and below
    ``threshold``: the sum of the false-positive and false-negative probability mass, each
    integrated over the similarities on its side of the threshold, is smallest."""
    import numpy as np

    pairs = np.array(
        [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float
    )
    bands, rows = pairs[:, :1], pairs[:, 1:]

    def mass(lo: float, hi: float, positive: bool) -> Any:
        s = np.linspace(lo, hi, 201)[None, :]
        hit = 1.0 - (1.0 - s**rows) ** bands
        return np.mean(1.0 - hit if positive else hit, axis=1) * (hi - lo)

    best = int(np.argmin(mass(0.0, threshold, False) + mass(threshold, 1.0, True)))
    return int(pairs[best, 0]), int(pairs[best, 1])


def near_dedup(
    examples: list[dict], threshold: float = 0.85, ngram: int = 5, num_perm: int = 128
) -> tuple[list[dict], list[dict]]:
    """Drop examples that are near-duplicates of an earlier kept one (MinHash LSH).

    Two examples are twins when the Jaccard similarity of their character ``ngram`` sets,
    estimated by MinHash with ``num_perm`` permutations, is at least ``threshold``.
    Deterministic: the hash functions are seeded and examples are visited in order; of several
    earlier twins, the most similar (then the earliest) is named.
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(
            f"near_dedup_threshold must be in (0, 1], got {threshold}.",
            where="data.clean.near_dedup_threshold",
            hint="e.g. 0.85: drop examples sharing about 85% of their character n-grams.",
        )
    if not examples:
        return [], []
    signatures = minhash_signatures([example_text(e) for e in examples], ngram, num_perm)
    bands, rows = _cached_bands(threshold, num_perm)
    keys = [
        [row.tobytes() for row in signatures[:, i * rows : (i + 1) * rows]] for i in range(bands)
    ]
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    kept, removed = [], []
    for i, e in enumerate(examples):
        candidates = {j for band in range(bands) for j in buckets[band].get(keys[band][i], ())}
        best, best_sim = None, 0.0
        for j in sorted(candidates):
            sim = float((signatures[i] == signatures[j]).mean())
            if sim >= threshold and sim > best_sim:
                best, best_sim = j, sim
        if best is not None:
            removed.append(
                removal(
                    e,
                    "near_dedup",
                    f"near-duplicate (estimated Jaccard {best_sim:.2f} >= {threshold})",
                    duplicate_of=examples[best].get("_source"),
                    similarity=round(best_sim, 4),
                )
            )
            continue
        for band in range(bands):
            buckets[band].setdefault(keys[band][i], []).append(i)
        kept.append(e)
    return kept, removed


_BANDS: dict[tuple[float, int], tuple[int, int]] = {}


def _cached_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    if (threshold, num_perm) not in _BANDS:
        _BANDS[threshold, num_perm] = lsh_bands(threshold, num_perm)
    return _BANDS[threshold, num_perm]


# ----------------------------------------------------------------------------- length


def length_filter(
    examples: list[dict],
    measure: Callable[[dict], tuple[int, int]],
    max_tokens: int,
    policy: Any = "truncate",
    min_tokens: int = 0,
) -> tuple[list[dict], list[dict], int]:
    """Filter examples by token count.

    Args:
        examples: the examples.
        measure: ``example -> (tokens, learned tokens within max_tokens)``, as the training
            objective encodes it.
        max_tokens: the longest sequence trained on (``data.max_length``).
        policy: ``truncate`` (keep long examples, cut to ``max_tokens`` by the data module;
            drop those left with no token to learn from), ``drop`` (drop every example longer
            than ``max_tokens``), or ``False`` (no filtering).
        min_tokens: drop examples shorter than this (0: keep all).

    Returns:
        ``(kept, removed, how many kept examples will be truncated)``.
    """
    if policy not in (False, None, "truncate", "drop"):
        raise ConfigError(
            f"Unknown too_long policy '{policy}'.",
            where="data.clean.too_long",
            hint="use truncate, drop, or false (no length filtering).",
        )
    kept, removed, truncated = [], [], 0
    for e in examples:
        tokens, learned = measure(e)
        if policy and min_tokens and tokens < min_tokens:
            removed.append(
                removal(e, "too_short", f"{tokens} tokens < min_tokens={min_tokens}", tokens=tokens)
            )
            continue
        if policy == "drop" and tokens > max_tokens:
            removed.append(
                removal(e, "too_long", f"{tokens} tokens > max_length={max_tokens}", tokens=tokens)
            )
            continue
        if policy == "truncate" and learned == 0:
            removed.append(
                removal(
                    e,
                    "no_loss_after_truncation",
                    f"{tokens} tokens; cut to max_length={max_tokens}, no answer token is left",
                    tokens=tokens,
                )
            )
            continue
        truncated += tokens > max_tokens
        kept.append(e)
    return kept, removed, truncated

"""``predictions.jsonl``: generations stored batch by batch, so a stopped evaluation resumes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from framework.run import atomic_path, write_json

log = logging.getLogger(__name__)

SIDES = ("base", "tuned")
PREDICTIONS = "predictions.jsonl"
PREDICTIONS_META = "predictions.meta.json"


# --------------------------------------------------------------------------- predictions file


def example_id(example: dict) -> str:
    """A stable id of an example: a hash of its content (not of its position)."""
    from framework.data.prepare import example_key

    return example_key(example)[:16]


class PredictionStore:
    """``predictions.jsonl``: one row per example, appended per batch and flushed.

    While an evaluation runs, a row holds one side's answer (``{"id", ..., "base": ...}``);
    :meth:`compact` merges them into one row per example with both sides once it is done.
    ``predictions.meta.json`` keeps a fingerprint of each side's model and generation
    settings: answers made under other settings are not reused.
    """

    def __init__(self, path: Path, fingerprints: dict[str, str]) -> None:
        self.path = Path(path)
        self.meta_path = self.path.with_name(PREDICTIONS_META)
        self.fingerprints = dict(fingerprints)
        self.rows: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        meta = {}
        if self.meta_path.exists():
            meta = json.loads(self.meta_path.read_text(encoding="utf-8")).get("sides", {})
        rewrite = False
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d is cut short (a stopped write); dropping it", self.path, n)
                    rewrite = True
                    continue
                if "id" not in row:
                    log.warning(
                        "%s:%d has no example id (an older format); it is not reused",
                        self.path,
                        n,
                    )
                    rewrite = True
                    continue
                self.rows.setdefault(row["id"], {}).update(row)
        for side in SIDES:
            have = sum(side in r for r in self.rows.values())
            if have and meta.get(side) != self.fingerprints.get(side):
                log.warning(
                    "%d %s answers in %s were made by another model or other generation "
                    "settings; they will be generated again",
                    have,
                    side,
                    self.path.name,
                )
                for r in self.rows.values():
                    r.pop(side, None)
                rewrite = True
        if rewrite:
            self._rewrite(list(self.rows))
        if self.rows:
            done = {s: sum(s in r for r in self.rows.values()) for s in SIDES}
            log.info("continuing from %s: %s", self.path, done)

    def answer(self, side: str, ex_id: str) -> str | None:
        """The stored answer of ``side`` for example ``ex_id``, if any."""
        return self.rows.get(ex_id, {}).get(side)

    def append(self, side: str, rows: list[dict]) -> None:
        """Append ``rows`` (each with ``id`` and ``side``'s answer) and flush them to disk."""
        self._write_meta(side)
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows.setdefault(row["id"], {}).update(row)
            f.flush()
            os.fsync(f.fileno())

    def _write_meta(self, side: str) -> None:
        meta = {"sides": {}}
        if self.meta_path.exists():
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        if meta["sides"].get(side) != self.fingerprints.get(side):
            meta["sides"][side] = self.fingerprints.get(side)
            write_json(self.meta_path, meta)

    def _rewrite(self, order: list[str]) -> None:
        with atomic_path(self.path) as tmp, tmp.open("w", encoding="utf-8") as f:
            for i in order:
                if i in self.rows:
                    f.write(json.dumps(self.rows[i], ensure_ascii=False) + "\n")

    def compact(self, order: list[str]) -> list[dict]:
        """Rewrite the file as one merged row per example, in ``order``; return the rows."""
        keep = [i for i in dict.fromkeys(order) if i in self.rows]
        if self.path.exists():  # nothing to write when no metric generated anything
            self._rewrite(keep)
        return [self.rows[i] for i in keep]

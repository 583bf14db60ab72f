"""The prepare stage: load -> validate -> clean -> split -> report.

Files are read by ``tunesmith_read_file`` plugins (by suffix), records are turned into
examples by the ``tunesmith_parse_record`` plugin named by ``data.format``. Records that are
wrong are written to ``data/rejects.jsonl`` with the reason and their ``file:line``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import random
import unicodedata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from framework.errors import ConfigError, DataError, RecordError
from framework.run import Run, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def original_cwd() -> Path:
    """The directory the user ran the command from (Hydra may change the working dir)."""
    try:
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd())
    except (ImportError, ValueError):
        return Path.cwd()


def resolve_files(spec: Any) -> list[Path]:
    """Expand ``data.path`` (a path, a glob, or a list of them) into existing files.

    Raises:
        DataError: a path matches no file.
    """
    if spec is None or spec == "???":
        raise ConfigError(
            "No data file was given.", where="data.path", hint="add data.path=<file or glob>"
        )
    specs = list(spec) if isinstance(spec, list | tuple | ListConfig) else [spec]
    files: list[Path] = []
    for item in specs:
        p = Path(str(item)).expanduser()
        if not p.is_absolute():
            p = original_cwd() / p
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise DataError(
                f"No data file matches '{item}'.",
                where=f"data.path={item} (looked in {p})",
                hint="check the path; relative paths are taken from the directory you ran in.",
            )
        files.extend(matches)
    return files


def _fingerprint(files: list[Path], data_cfg: DictConfig) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    h.update(json.dumps(_plain(data_cfg), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def normalize_text(value: Any) -> Any:
    """Unicode NFC and surrounding-whitespace trim of every string inside an example."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip()
    if isinstance(value, list):
        return [normalize_text(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize_text(v) if not k.startswith("_") else v for k, v in value.items()}
    return value


def example_key(example: dict) -> str:
    """A content hash of an example (its text fields only), for de-duplication."""
    content = {k: v for k, v in example.items() if not k.startswith("_")}
    return hashlib.sha256(
        json.dumps(content, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


def load_examples(run: Run, files: list[Path]) -> tuple[list[dict], list[dict]]:
    """Read and validate every record of ``files``.

    Returns:
        ``(examples, rejects)``; each example carries ``_source`` (``file:line``).
    """
    data_cfg = run.cfg.data
    fmt = str(data_cfg.format)
    run.plugins.require("format", fmt)
    examples: list[dict] = []
    rejects: list[dict] = []
    for path in files:
        records = run.hook.tunesmith_read_file(path=path, data_cfg=data_cfg)
        if records is None:
            raise DataError(
                f"No plugin reads files like '{path.name}'.",
                where=str(path),
                hint=f"supported suffixes: {', '.join(run.plugins.names('file'))}",
            )
        for line, record in records:
            source = f"{path}:{line}"
            try:
                if isinstance(record, RecordError):
                    raise record
                example = run.hook.tunesmith_parse_record(
                    name=fmt, record=record, data_cfg=data_cfg
                )
                if example is None:
                    raise RecordError("unparsed", f"the '{fmt}' plugin returned nothing")
            except RecordError as err:
                rejects.append(
                    {
                        "source": source,
                        "reason": err.reason,
                        "field": err.field,
                        "message": err.message,
                        "record": record if not isinstance(record, RecordError) else None,
                    }
                )
                if str(data_cfg.get("on_error", "skip")) == "raise":
                    raise DataError(
                        f"Bad record ({err.reason}): {err.message}",
                        where=source + (f" field '{err.field}'" if err.field else ""),
                        hint="fix the record, or set data.on_error=skip to drop bad records "
                        "into rejects.jsonl",
                    ) from None
                continue
            example["_source"] = source
            examples.append(example)
    return examples, rejects


def clean_examples(
    examples: list[dict], data_cfg: DictConfig, counts: dict[str, int]
) -> list[dict]:
    """Normalise text and drop exact duplicates (before splitting, so no test twin in train)."""
    clean_cfg = data_cfg.get("clean") or {}
    if clean_cfg.get("normalize", True):
        examples = [normalize_text(e) for e in examples]
    if clean_cfg.get("dedup", True):
        seen: set[str] = set()
        kept = []
        for e in examples:
            key = example_key(e)
            if key in seen:
                counts["duplicates"] = counts.get("duplicates", 0) + 1
                continue
            seen.add(key)
            kept.append(e)
        examples = kept
    return examples


def split_examples(examples: list[dict], ratios: Any, seed: int) -> dict[str, list[dict]]:
    """Shuffle with ``seed`` and cut into train/val/test by ``ratios``."""
    r = {k: float(ratios.get(k, 0.0)) for k in SPLITS}
    total = sum(r.values())
    if total <= 0 or any(v < 0 for v in r.values()):
        raise ConfigError(
            f"Split ratios must be non-negative and not all zero, got {r}.",
            where="data.split",
            hint="e.g. data.split.train=0.8 data.split.val=0.1 data.split.test=0.1",
        )
    order = sorted(examples, key=example_key)  # independent of file order
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = round(n * r["test"] / total)
    n_val = round(n * r["val"] / total)
    return {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }


def prepare(run: Run) -> dict[str, list[dict]]:
    """Run the prepare stage and return the splits (cached by a hash of inputs + config)."""
    data_cfg = run.cfg.data
    files = resolve_files(data_cfg.get("path"))
    fingerprint = _fingerprint(files, data_cfg) + f"-{run.cfg.seed}"
    report_path = run.data_dir / "report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        if report.get("fingerprint") == fingerprint:
            log.info("data unchanged since the last prepare; reusing %s", run.data_dir)
            run.splits = load_splits(run)
            return run.splits

    examples, rejects = load_examples(run, files)
    loaded = len(examples) + len(rejects)
    write_jsonl(run.data_dir / "rejects.jsonl", rejects)
    max_share = float(data_cfg.get("max_reject_ratio", 0.5))
    if loaded and len(rejects) / loaded > max_share:
        raise DataError(
            f"{len(rejects)} of {loaded} records were rejected, more than "
            f"data.max_reject_ratio={max_share}.",
            where=str(run.data_dir / "rejects.jsonl"),
            hint="read the reasons there; is data.format right for these files?",
        )
    counts: dict[str, int] = {}
    examples = clean_examples(examples, data_cfg, counts)
    if not examples:
        raise DataError(
            "No usable example is left after validation and cleaning.",
            where=", ".join(str(f) for f in files),
            hint="check data.format and the rejects file; training needs at least a few examples.",
        )
    splits = split_examples(examples, data_cfg.split, int(run.cfg.seed))
    if not splits["train"]:
        raise DataError(
            f"The train split is empty ({len(examples)} examples in all).",
            where="data.split",
            hint="add data or give train a larger share.",
        )
    for name, rows in splits.items():
        write_jsonl(run.data_dir / f"{name}.jsonl", rows)
    rejected_by_reason: dict[str, int] = {}
    for r in rejects:
        rejected_by_reason[r["reason"]] = rejected_by_reason.get(r["reason"], 0) + 1
    report = {
        "fingerprint": fingerprint,
        "files": [str(f) for f in files],
        "loaded": loaded,
        "rejected": rejected_by_reason,
        "removed": counts,
        "splits": {k: len(v) for k, v in splits.items()},
    }
    write_json(report_path, report)
    log.info(
        "data: %d loaded, %d rejected, %d duplicates removed -> train %d / val %d / test %d",
        loaded,
        len(rejects),
        counts.get("duplicates", 0),
        *(len(splits[k]) for k in SPLITS),
    )
    run.splits = splits
    return splits


def load_splits(run: Run) -> dict[str, list[dict]]:
    """The splits written by an earlier prepare stage of this run (or prepare them now)."""
    if run.splits is not None:
        return run.splits
    if all((run.data_dir / f"{s}.jsonl").exists() for s in SPLITS):
        run.splits = {s: read_jsonl(run.data_dir / f"{s}.jsonl") for s in SPLITS}
        return run.splits
    return prepare(run)

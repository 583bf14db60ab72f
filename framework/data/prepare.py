"""The prepare stage: load -> validate -> clean/dedup -> split -> report and spot-check.

Files are read by ``tunesmith_read_file`` plugins (by suffix) and records are turned into
examples by the ``tunesmith_parse_record`` plugin named by the source's ``format``. Everything
the stage writes goes to ``<run dir>/data/``:

* ``train.jsonl``, ``val.jsonl``, ``test.jsonl``: the splits (each example keeps ``_source``,
  its ``file:line``, and ``_origin``, the name of its source);
* ``rejects.jsonl``: every record that was not valid, with reason, message and ``file:line``;
* ``removed.jsonl``: every valid example a cleaning step removed, and why;
* ``report.json`` / ``report.md`` / ``lengths.png``: the data report;
* ``spot_check.md``: training examples exactly as the model sees them, loss-free parts marked.

The output is cached under ``data.cache_dir`` by a fingerprint of the input files, the
relevant config (data, seed, objective, model/tokenizer) and the code that prepares data, so
any later run with the same inputs reuses it.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import logging
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from framework.data.chat import IGNORE_INDEX
from framework.data.cleaning import (
    exact_dedup,
    example_key,
    length_filter,
    near_dedup,
    normalize,
)
from framework.data.records import check_text
from framework.errors import ConfigError, DataError, RecordError, did_you_mean
from framework.run import Run, atomic_path, disk_error, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

#: Bump when the prepare stage's output changes for the same input (invalidates caches).
PREPARE_VERSION = 2

#: Keys a ``data.sources`` entry may set.
SOURCE_KEYS = (
    "name",
    "path",
    "format",
    "columns",
    "roles",
    "delimiter",
    "on_error",
    "max_samples",
    "weight",
    "split",
)

#: ``data`` keys that do not change the prepared data (left out of the fingerprint).
NOT_FINGERPRINTED = (
    "batch_size",
    "num_workers",
    "packing",
    "pack_length",
    "group_by_length",
    "cache",
    "cache_dir",
    "name",
)

#: Everything the prepare stage writes into ``<run>/data``.
OUTPUT_FILES = (
    "train.jsonl",
    "val.jsonl",
    "test.jsonl",
    "rejects.jsonl",
    "removed.jsonl",
    "spot_check.md",
    "lengths.png",
    "report.md",
    "report.json",  # last: its presence marks a complete prepare
)


# ----------------------------------------------------------------------------- sources


def original_cwd() -> Path:
    """The directory the user ran the command from (Hydra may change the working dir)."""
    try:
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd())
    except (ImportError, ValueError):
        return Path.cwd()


def resolve_files(spec: Any, key: str = "data.path") -> list[Path]:
    """Expand a path, a glob, or a list of them into existing files (sorted per pattern).

    Args:
        spec: the config value.
        key: the config key it came from, for messages.

    Raises:
        ConfigError: no path was given.
        DataError: a path matches no file.
    """
    if spec is None or spec == "???" or (isinstance(spec, list | ListConfig) and not spec):
        raise ConfigError("No data file was given.", where=key, hint=f"add {key}=<file or glob>")
    specs = list(spec) if isinstance(spec, list | tuple | ListConfig) else [spec]
    files: list[Path] = []
    for item in specs:
        p = Path(str(item)).expanduser()
        if not p.is_absolute():
            p = original_cwd() / p
        matches = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise DataError(
                f"No data file matches '{item}'.",
                where=f"{key}={item} (looked in {p})",
                hint="check the path; relative paths are taken from the directory you ran in.",
            )
        files.extend(m for m in matches if m not in files)
    return files


@dataclass
class Source:
    """One data source of a run: files of one record shape, and how to use them.

    Attributes:
        name: shown in the report; stored with each example as ``_origin``.
        files: the files to read.
        cfg: the ``data`` config with this source's own keys (format, columns...) applied;
            what the file and format plugins receive.
        max_samples: keep at most this many of its examples (seeded sample), or ``None``.
        weight: how often its examples appear in the train split (2: twice, 0.5: a half).
        split: ``train``, ``val`` or ``test`` for a source that *is* (part of) that split;
            ``None`` to cut it into train/val/test by ``data.split``.
    """

    name: str
    files: list[Path]
    cfg: DictConfig
    max_samples: int | None = None
    weight: float = 1.0
    split: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return str(self.cfg.format)


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _number(value: Any, key: str, kind: type, minimum: float) -> Any:
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum or isinstance(value, bool):
        raise ConfigError(
            f"{key} must be a {kind.__name__} >= {minimum}, got {value!r}.", where=key
        )
    return number


def resolve_sources(data_cfg: DictConfig) -> list[Source]:
    """The sources of a run: ``data.sources`` or ``data.path``, plus ``val_path``/``test_path``.

    Raises:
        ConfigError: a source entry has an unknown key, or a bad weight, cap or split.
    """
    base = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(base, dict)
    entries = base.pop("sources", None) or []
    val_path, test_path = base.pop("val_path", None), base.pop("test_path", None)
    if not entries:
        entries = [
            {
                "name": None,
                "path": base.get("path"),
                "max_samples": base.get("max_samples"),
                "weight": base.get("weight", 1.0),
            }
        ]
        keys = [("data", "data.path")]
    else:
        if base.get("path"):
            log.warning("data.path is not used: data.sources lists the sources of this run")
        keys = [(f"data.sources[{i}]", f"data.sources[{i}].path") for i in range(len(entries))]
    for split, spec in (("val", val_path), ("test", test_path)):
        if spec:
            entries.append({"name": split, "path": spec, "split": split})
            keys.append((f"data.{split}_path", f"data.{split}_path"))

    sources: list[Source] = []
    for i, (entry, (key, path_key)) in enumerate(zip(entries, keys, strict=True)):
        if not isinstance(entry, dict):
            raise ConfigError(
                f"A data source must be a mapping like {{path: ..., format: ...}}, got {entry!r}.",
                where=key,
            )
        unknown = [k for k in entry if k not in SOURCE_KEYS]
        if unknown:
            raise ConfigError(
                f"Unknown key '{unknown[0]}' in a data source.{did_you_mean(unknown[0], SOURCE_KEYS)}",
                where=key,
                hint=f"a source may set: {', '.join(SOURCE_KEYS)}",
            )
        files = resolve_files(entry.get("path"), key=path_key)
        cfg = OmegaConf.create({k: v for k, v in base.items()})
        with open_dict(cfg):
            for k in ("format", "columns", "roles", "delimiter", "on_error"):
                if entry.get(k) is not None:
                    cfg[k] = entry[k]
            cfg.path = [str(f) for f in files]
        split = entry.get("split")
        if split not in (None, "train", "val", "test"):
            raise ConfigError(
                f"A source's split must be train, val or test, got {split!r}.",
                where=f"{key}.split",
                hint="split: val makes the source the validation set; leave it out to cut "
                "the source into train/val/test by data.split.",
            )
        weight = _number(entry.get("weight", 1.0), f"{key}.weight", float, 0.0)
        if split in ("val", "test") and weight not in (None, 1.0):
            raise ConfigError(
                "weight only applies to training data; a val/test source is used as it is.",
                where=f"{key}.weight",
            )
        name = entry.get("name") or (files[0].stem if len(files) == 1 else f"source{i + 1}")
        while name in {s.name for s in sources}:
            name = f"{name}-{i + 1}"
        sources.append(
            Source(
                name=str(name),
                files=files,
                cfg=cfg,
                max_samples=_number(entry.get("max_samples"), f"{key}.max_samples", int, 1),
                weight=1.0 if weight is None else weight,
                split=split,
            )
        )
    return sources


# ----------------------------------------------------------------------------- fingerprint


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _code_digest(run: Run) -> str:
    """A hash of the code that decides the prepared data: this package's data modules and
    the packages of every plugin that reads files, parses records or encodes examples
    (:meth:`framework.manager.TunesmithPluginManager.code_digest`)."""
    digest = run.plugins.code_digest(
        ("tunesmith_read_file", "tunesmith_parse_record", "tunesmith_encode_example"),
        modules=(
            __name__,
            "framework.data.cleaning",
            "framework.data.records",
            "framework.data.encoding",
            "framework.data.chat",
        ),
    )
    return hashlib.sha256(f"prepare-v{PREPARE_VERSION}:{digest}".encode()).hexdigest()


def _objective_key(cfg: DictConfig) -> Any:
    """The objective in the fingerprint: its name, or name and options when it has any."""
    objective = _plain(cfg.objective)
    return objective["name"] if set(objective) == {"name"} else objective


def fingerprint(run: Run, sources: list[Source]) -> str:
    """A hash of everything that decides the prepared data: files, config and code."""
    cfg = run.cfg
    data = {k: v for k, v in _plain(cfg.data).items() if k not in NOT_FINGERPRINTED}
    inputs = {
        "data": data,
        "sources": [
            {
                "name": s.name,
                "files": [[str(f), _file_digest(f)] for f in s.files],
                "cfg": {k: _plain(s.cfg.get(k)) for k in ("format", "columns", "roles")},
                "max_samples": s.max_samples,
                "weight": s.weight,
                "split": s.split,
            }
            for s in sources
        ],
        "seed": int(cfg.seed),
        "objective": _objective_key(cfg),
        "model": {k: v for k, v in _plain(cfg.model).items() if k != "compile"},
        "code": _code_digest(run),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- load


def read_file(run: Run, path: Path, cfg: DictConfig) -> Any:
    """The raw records of ``path``, read by the plugin of its file type.

    The file type is the longest registered :class:`~framework.FileType` suffix the file
    name ends with (``.qa.txt`` before ``.txt``), the same rule as the start-up check; only
    the plugins declaring it are asked. A file no plugin declares a type for is offered to
    every ``tunesmith_read_file`` implementation (plugins written for the first contract).

    Raises:
        DataError: no plugin reads the file.
    """
    plugins = run.plugins
    file_type = plugins.file_type(path)
    if file_type is None:
        records = run.hook.tunesmith_read_file(path=path, data_cfg=cfg)
        readers = ""
    else:
        records = plugins.caller("tunesmith_read_file", "file", file_type)(path=path, data_cfg=cfg)
        names = sorted({p.plugin for p in plugins.providers("file", file_type)})
        readers = f" (the plugins declaring {file_type}: {', '.join(names)})"
    if records is None:
        raise DataError(
            f"No plugin reads files like '{path.name}'{readers}.",
            where=str(path),
            hint=f"supported suffixes: {', '.join(plugins.names('file'))}",
        )
    return records


def load_source(run: Run, source: Source) -> tuple[list[dict], list[dict]]:
    """Read and validate every record of ``source``.

    Returns:
        ``(examples, rejects)``; each example carries ``_source`` (``file:line``) and
        ``_origin`` (the source name); each reject has ``source``, ``reason``, ``field``,
        ``message`` and the ``record`` as read.

    Raises:
        DataError: a record is bad and ``on_error`` is ``raise`` (the same message as the
            reject), a file has no reader, or the source has no record at all.
    """
    cfg = source.cfg
    fmt = source.format
    run.plugins.require("format", fmt)
    on_error = str(cfg.get("on_error", "skip"))
    if on_error not in ("skip", "raise"):
        raise ConfigError(
            f"data.on_error must be skip or raise, got '{on_error}'.", where="data.on_error"
        )
    examples: list[dict] = []
    rejects: list[dict] = []
    parse = run.plugins.caller("tunesmith_parse_record", "format", fmt)
    for path in source.files:
        records = read_file(run, path, cfg)
        for line, record in records:
            where = f"{path}:{line}"
            try:
                if isinstance(record, RecordError):
                    raise record
                example = parse(name=fmt, record=record, data_cfg=cfg)
                if example is None:
                    raise RecordError("unparsed", f"the '{fmt}' plugin returned nothing")
                check_text(example)
            except RecordError as err:
                rejects.append(
                    {
                        "source": where,
                        "reason": err.reason,
                        "field": err.field,
                        "message": err.message,
                        "record": None if isinstance(record, RecordError) else _jsonable(record),
                    }
                )
                if on_error == "raise":
                    write_jsonl(run.data_dir / "rejects.jsonl", rejects)
                    raise DataError(
                        f"Bad record ({err.reason}): {err.message}",
                        where=where + (f" field '{err.field}'" if err.field else ""),
                        hint="fix the record, or set data.on_error=skip to drop bad records "
                        "into rejects.jsonl",
                    ) from None
                continue
            example["_source"] = where
            example["_origin"] = source.name
            examples.append(example)
    if not examples and not rejects:
        raise DataError(
            f"The data source '{source.name}' holds no record.",
            where=", ".join(str(f) for f in source.files),
            hint="check the file is not empty, and that a .json file holds a list of records.",
        )
    return examples, rejects


def _jsonable(record: Any) -> Any:
    """``record`` as something JSON can write (a bad record must never break the rejects file)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
        return record
    except (TypeError, ValueError, UnicodeEncodeError):
        return repr(record)


# ----------------------------------------------------------------------------- split


def sample(examples: list[dict], n: int, seed: int) -> list[dict]:
    """A seeded random sample of ``n`` examples, independent of their input order."""
    if n >= len(examples):
        return list(examples)
    order = sorted(examples, key=example_key)
    random.Random(seed).shuffle(order)
    return order[:n]


def split_examples(examples: list[dict], ratios: Any, seed: int) -> dict[str, list[dict]]:
    """Shuffle with ``seed`` and cut into train/val/test by ``ratios``.

    The order depends only on the examples' content and the seed (not on file order or
    machine), so the same data and seed always give the same splits.

    Raises:
        ConfigError: negative ratios, or all zero.
    """
    r = {k: float(ratios.get(k, 0.0) or 0.0) for k in SPLITS}
    total = sum(r.values())
    if total <= 0 or any(v < 0 for v in r.values()):
        raise ConfigError(
            f"Split ratios must be non-negative and not all zero, got {r}.",
            where="data.split",
            hint="e.g. data.split.train=0.8 data.split.val=0.1 data.split.test=0.1",
        )
    order = sorted(examples, key=example_key)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = round(n * r["test"] / total)
    n_val = round(n * r["val"] / total)
    return {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }


def apply_weight(examples: list[dict], weight: float, seed: int) -> list[dict]:
    """Repeat (weight > 1) or subsample (weight < 1) a source's training examples.

    ``2`` puts every example in twice, ``1.5`` every example once and a seeded half again,
    ``0.5`` a seeded half.
    """
    whole = int(weight)
    extra = round((weight - whole) * len(examples))
    return list(examples) * whole + sample(examples, extra, seed)


# ----------------------------------------------------------------------------- tokenizer


def prepare_tokenizer(run: Run) -> Any:
    """The tokenizer the prepare stage measures and renders with, loaded as cheaply as it can.

    The model's own tokenizer if a stage already built it; else the tokenizer files of
    ``model.tokenizer_path`` or ``model.path`` when that is a local folder (no weights are
    loaded); else the model is built (and kept for the train stage).
    """
    if run.tokenizer is not None:
        return run.tokenizer
    model_cfg = run.cfg.model
    folder = model_cfg.get("tokenizer_path") or model_cfg.get("path")
    if (
        folder
        and folder != "???"
        and (Path(str(folder)).expanduser() / "tokenizer_config.json").is_file()
    ):
        from transformers import AutoTokenizer

        from framework.data.chat import ensure_chat_template

        tokenizer = AutoTokenizer.from_pretrained(
            Path(str(folder)).expanduser(),
            trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        )
        return ensure_chat_template(tokenizer)
    return run.ensure_model()[1]


class Encoder:
    """Encodes examples through the objective's hook, each example once.

    Every example is encoded once with ``data.max_length`` lifted: that gives the report its
    token lengths and the cleaning steps their counts. An example that fits within
    ``data.max_length`` is then exactly what training sees (a limit that is not reached cuts
    nothing), so :meth:`hand_over` gives those encodings to the train stage of this process
    instead of it tokenising every example again; only the few longer examples are encoded a
    second time, cut to ``data.max_length``. Encodings made of more than ``input_ids`` and
    ``labels`` are not kept (the train stage encodes those itself, as the token cache does).
    """

    def __init__(self, run: Run, tokenizer: Any) -> None:
        self.run, self.tokenizer = run, tokenizer
        from framework.train.objective import describe_objective

        info = describe_objective(run.cfg, run.plugins)
        self.objective, self.trains_on = info.name, info.example
        self.encode_hook = run.plugins.caller("tunesmith_encode_example", "objective", info.name)
        self.max_length = int(run.cfg.data.max_length)
        self.full_cfg = copy.deepcopy(run.cfg)
        with open_dict(self.full_cfg):
            self.full_cfg.data.max_length = 1_000_000_000
        self.cache: dict[str, tuple[int, int]] = {}
        #: what training sees of each example measured so far (compact), by example key
        self.for_training: dict[str, dict] = {}
        #: whether every encoding is made of input_ids and labels only
        self.reusable = True

    def encode(self, example: dict, full: bool = False) -> dict[str, list[int]]:
        """The example as the model sees it (cut to ``data.max_length`` unless ``full``)."""
        enc = self.encode_hook(
            name=self.objective,
            example=example,
            tokenizer=self.tokenizer,
            cfg=self.full_cfg if full else self.run.cfg,
        )
        if enc is None:
            shape = (
                "text"
                if "text" in example
                else "pair"
                if "rejected" in example
                else "chat"
                if "messages" in example
                else "?"
            )
            raise DataError(
                f"The objective '{self.objective}' does not train on '{shape}' examples "
                f"(format '{example.get('_origin')}' of {example.get('_source')}); it trains "
                f"on '{self.trains_on}' examples.",
                where=f"objective={self.objective}",
                hint="plain text (data=text) needs objective=pretrain; conversations, "
                "alpaca and pairs need objective=sft.",
            )
        return enc

    def measure(self, example: dict) -> tuple[int, int]:
        """``(tokens before truncation, learned tokens within max_length)``."""
        key = example_key(example)
        if key not in self.cache:
            enc = self.encode(example, full=True)
            learned = sum(lab != -100 for lab in enc["labels"][: self.max_length])
            self.cache[key] = (len(enc["input_ids"]), learned)
            from framework.data import token_cache  # numpy: not at start-up

            if set(enc) != token_cache.CACHED_KEYS:
                self.reusable = False
            elif len(enc["input_ids"]) <= self.max_length:
                self.for_training[key] = token_cache.compact(enc)  # nothing to cut
        return self.cache[key]

    def training_encoding(self, example: dict) -> dict:
        """What training sees of ``example``: its full encoding when that fits, else cut."""
        key = example_key(example)
        if key not in self.cache:
            self.measure(example)
        if key not in self.for_training:
            from framework.data import token_cache

            self.for_training[key] = token_cache.compact(self.encode(example))
        return self.for_training[key]

    def hand_over(self, splits: dict[str, list[dict]]) -> None:
        """Keep the train and validation splits' encodings for the train stage of this
        process (:func:`framework.data.token_cache.remember`), as it would make them."""
        from framework.data import token_cache

        setup = token_cache.setup_digest(self.tokenizer, self.run.cfg, self.run.plugins)
        entries: dict[str, list[dict]] = {}
        for split in ("train", "val"):
            examples = splits.get(split) or []
            if not self.reusable or not examples:
                continue  # the train stage encodes what the token cache cannot hold itself
            rows = [self.training_encoding(e) for e in examples]
            rows = [r for r in rows if int(r["labels"].max(initial=IGNORE_INDEX)) > IGNORE_INDEX]
            entries[token_cache.cache_key(examples, setup)] = rows
        token_cache.remember(entries)


# ----------------------------------------------------------------------------- prepare


def _reuse(run: Run, fp: str, cache_dir: Path | None) -> dict[str, list[dict]] | None:
    """Splits from an earlier prepare with the same fingerprint (this run dir, or the cache)."""
    from framework.data.report import print_report

    own = run.data_dir / "report.json"
    complete = own.exists() and all((run.data_dir / f"{s}.jsonl").exists() for s in SPLITS)
    if complete and json.loads(own.read_text(encoding="utf-8")).get("fingerprint") == fp:
        log.info("data unchanged since the last prepare of this run; reusing %s", run.data_dir)
    elif cache_dir is not None and (cache_dir / fp / "report.json").exists():
        log.info("reusing prepared data from the cache: %s", cache_dir / fp)
        try:
            with atomic_path(run.data_dir) as tmp:
                shutil.copytree(cache_dir / fp, tmp)
        except OSError as exc:  # shutil.Error too: copytree gathers each file's error
            err = disk_error(exc, "the prepared data (copied from the cache)", run.data_dir)
            if err is None:
                raise
            raise err from exc
    else:
        return None
    report = json.loads(own.read_text(encoding="utf-8"))
    report["reused"] = True
    print_report(report)
    run.splits = {s: read_jsonl(run.data_dir / f"{s}.jsonl") for s in SPLITS}
    return run.splits


def _store_in_cache(run: Run, fp: str, cache_dir: Path | None) -> None:
    if cache_dir is None:
        return
    try:
        with atomic_path(cache_dir / fp) as tmp:
            tmp.mkdir(parents=True)
            for name in OUTPUT_FILES:
                if (run.data_dir / name).exists():
                    shutil.copy2(run.data_dir / name, tmp / name)
    except OSError as exc:  # a read-only or full cache must not fail the run
        log.warning("could not store prepared data in the cache %s: %s", cache_dir, exc)


def _check_reject_share(
    source: Source, loaded: int, rejects: list[dict], limit: float, run: Run
) -> None:
    if loaded and len(rejects) / loaded > limit:
        reasons: dict[str, int] = {}
        for r in rejects:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        top = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        raise DataError(
            f"{len(rejects)} of {loaded} records of source '{source.name}' were rejected "
            f"({top}), more than data.max_reject_ratio={limit}.",
            where=f"{run.data_dir / 'rejects.jsonl'} (first: {rejects[0]['source']}: "
            f"{rejects[0]['message']})",
            hint=f"read the reasons there; is format '{source.format}' right for these files "
            "(data.format, data.columns)? Raise data.max_reject_ratio to accept more losses.",
        )


def load_all(run: Run, sources: list[Source]) -> tuple[list[dict], list[dict]]:
    """Load and validate every source, writing ``rejects.jsonl`` as it goes.

    Raises:
        DataError: a source's reject share is over ``data.max_reject_ratio``.
    """
    limit = float(run.cfg.data.get("max_reject_ratio", 0.5))
    examples: list[dict] = []
    rejects: list[dict] = []
    for source in sources:
        kept, bad = load_source(run, source)
        rejects.extend(bad)
        write_jsonl(run.data_dir / "rejects.jsonl", rejects)
        source.stats.update(loaded=len(kept) + len(bad), rejected=len(bad))
        _check_reject_share(source, len(kept) + len(bad), bad, limit, run)
        examples.extend(kept)
    return examples, rejects


def clean(
    examples: list[dict], sources: list[Source], clean_cfg: Any, encoder: Encoder
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Run the cleaning steps ``data.clean`` switches on, over all sources together.

    User-given test, then validation examples go first, so a twin in train is the one removed.

    Returns:
        ``(kept examples, removed records, counts of changed/truncated examples)``.
    """
    rank = {"test": 0, "val": 1}
    split_of = {s.name: s.split for s in sources}
    examples = sorted(examples, key=lambda e: rank.get(split_of[e["_origin"]] or "", 2))
    counts: dict[str, int] = {}
    removed: list[dict] = []
    normal_form = clean_cfg.get("normalize", "NFC")
    if normal_form:
        examples, counts["normalized"] = normalize(examples, normal_form)
    if clean_cfg.get("dedup", True):
        examples, gone = exact_dedup(examples)
        removed += gone
    if clean_cfg.get("near_dedup", True):
        examples, gone = near_dedup(
            examples,
            threshold=float(clean_cfg.get("near_dedup_threshold", 0.85)),
            ngram=int(clean_cfg.get("near_dedup_ngram", 5)),
            num_perm=int(clean_cfg.get("near_dedup_num_perm", 128)),
        )
        removed += gone
    examples, gone, counts["truncated"] = length_filter(
        examples,
        encoder.measure,
        max_tokens=encoder.max_length,
        policy=clean_cfg.get("too_long", "truncate"),
        min_tokens=int(clean_cfg.get("min_tokens", 0) or 0),
    )
    removed += gone
    return examples, removed, counts


def split_sources(
    examples: list[dict], sources: list[Source], ratios: Any, seed: int
) -> tuple[dict[str, list[dict]], list[dict]]:
    """Cap, split and weight each source's examples, and gather the splits.

    Returns:
        ``(splits, removed records for examples over a source's max_samples)``.
    """
    ratios = {k: float(ratios.get(k, 0.0) or 0.0) for k in SPLITS}
    for fixed in ("val", "test"):  # given as files: the other ratios cut the rest
        if any(s.split == fixed for s in sources):
            ratios[fixed] = 0.0
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    removed: list[dict] = []
    for i, source in enumerate(sources):
        mine = [e for e in examples if e["_origin"] == source.name]
        if source.max_samples is not None and len(mine) > source.max_samples:
            capped = sample(mine, source.max_samples, seed + i)
            keep = {id(e) for e in capped}
            message = f"over the cap of {source.max_samples} examples of source '{source.name}'"
            removed += [
                {"step": "max_samples", "source": e["_source"], "message": message}
                for e in mine
                if id(e) not in keep
            ]
            mine = capped
        source.stats["kept"] = len(mine)
        if source.split is not None:  # the whole source is one split
            parts: dict[str, list[dict]] = {s: [] for s in SPLITS}
            parts[source.split] = sorted(mine, key=example_key)
        else:
            parts = split_examples(mine, ratios, seed)
        parts["train"] = apply_weight(parts["train"], source.weight, seed + i)
        for s in SPLITS:
            source.stats[s] = len(parts[s])
            splits[s].extend(parts[s])
    if len(sources) > 1 or any(s.weight != 1.0 for s in sources):
        random.Random(seed).shuffle(splits["train"])  # mix the sources
    return splits, removed


def _defer_histogram(
    run: Run, report: dict[str, Any], lengths: dict[str, list[int]], cached: Path | None
) -> None:
    """Draw ``lengths.png`` later (:func:`framework.data.report.defer_plot`), into the run
    and into its entry of the prepared-data cache."""
    from framework.data.report import defer_plot, plot_lengths

    path = run.data_dir / "lengths.png"

    def draw() -> None:
        plot_lengths(report, lengths, path)
        if cached is not None and (cached / "report.json").is_file():
            with atomic_path(cached / path.name) as tmp:
                shutil.copy2(path, tmp)

    defer_plot(str(path), draw)


def prepare(run: Run, defer_plots: bool = False) -> dict[str, list[dict]]:
    """Run the prepare stage and return the splits (reused when inputs and config match).

    Args:
        run: the run.
        defer_plots: draw ``lengths.png`` after training (or when the process exits), not
            now: matplotlib stays off the path to the first optimizer step.

    Raises:
        DataError: bad data (too many rejects, nothing left, a bad record with
            ``on_error=raise``...).
        ConfigError: a bad ``data.*`` setting.
    """
    from framework.data.report import (
        build_report,
        print_report,
        split_lengths,
        write_report_files,
    )

    data_cfg = run.cfg.data
    seed = int(run.cfg.seed)
    sources = resolve_sources(data_cfg)
    fp = fingerprint(run, sources)
    cache_dir = (
        Path(str(data_cfg.cache_dir)).expanduser()
        if data_cfg.get("cache", True) and data_cfg.get("cache_dir")
        else None
    )
    reused = _reuse(run, fp, cache_dir)
    if reused is not None:
        return reused

    run.data_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES[::-1]:  # a stale report.json first: never looks complete
        (run.data_dir / name).unlink(missing_ok=True)

    examples, rejects = load_all(run, sources)
    encoder = Encoder(run, prepare_tokenizer(run))
    examples, removed, counts = clean(examples, sources, data_cfg.get("clean") or {}, encoder)
    splits, capped = split_sources(examples, sources, data_cfg.split, seed)
    removed += capped
    write_jsonl(run.data_dir / "removed.jsonl", removed)
    steps = {**counts, **Counter(r["step"] for r in removed)}
    if not splits["train"]:
        total = sum(len(v) for v in splits.values())
        raise DataError(
            f"The train split is empty ({total} usable examples in all, "
            f"{len(rejects)} rejected, {len(removed)} removed by cleaning).",
            where=f"data.split / {run.data_dir}",
            hint="read rejects.jsonl and removed.jsonl there; add data or give train a "
            "larger share.",
        )
    for name, rows in splits.items():
        write_jsonl(run.data_dir / f"{name}.jsonl", rows)

    report = build_report(fp, sources, rejects, steps, splits, encoder)
    write_report_files(run, report, splits, encoder, seed, plot=not defer_plots)
    print_report(report)
    _store_in_cache(run, fp, cache_dir)
    if defer_plots:
        _defer_histogram(run, report, split_lengths(splits, encoder), cache_dir and cache_dir / fp)
    encoder.hand_over(splits)
    run.splits = splits
    return splits


def load_splits(run: Run) -> dict[str, list[dict]]:
    """The splits written by an earlier prepare stage of this run (or prepare them now, its
    plots left for after training)."""
    if run.splits is not None:
        return run.splits
    if (run.data_dir / "report.json").exists() and all(
        (run.data_dir / f"{s}.jsonl").exists() for s in SPLITS
    ):
        run.splits = {s: read_jsonl(run.data_dir / f"{s}.jsonl") for s in SPLITS}
        return run.splits
    return prepare(run, defer_plots=True)

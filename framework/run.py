"""One run: its config, its directory, its plugin manager and what its stages share."""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.descriptors import Method
from framework.errors import TunesmithError
from framework.manager import TunesmithPluginManager

log = logging.getLogger(__name__)

STATE_FILE = "run_state.json"
#: Written beside ``last.ckpt`` after each save: its step, epoch and time, readable at once.
CHECKPOINT_NOTE = "last.json"


#: Prefix of the temporary folders :func:`atomic_path` writes in (removed on success).
TMP_PREFIX = ".tmp-"


class SaveError(TunesmithError):
    """A file could not be written (full disk, no permission, read-only file system)."""


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it over ``path``.

    Works for files and directories, so a kill during a save never leaves a file that
    looks whole: either the old content or the new one is at ``path``. What a killed save
    leaves behind is a hidden ``.tmp-<name>.*`` folder, which :func:`remove_stale_temps`
    clears on the next run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent))
    target = tmp / path.name
    try:
        try:
            yield target
        except OSError as exc:  # name the file a write without a name failed on
            if exc.filename is None or str(exc.filename).startswith(str(tmp)):
                exc.filename = str(path)
            raise
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f"{TMP_PREFIX}{path.name}.old")
            _rmtree(old)
            os.replace(path, old)
            os.replace(target, path)
            _rmtree(old)
        else:
            os.replace(target, path)
    finally:
        _rmtree(tmp)


def _rmtree(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(directory: Path, depth: int = 2) -> int:
    """Remove what killed saves left under ``directory`` (``.tmp-*`` folders); return how many.

    Call it only while holding the run's lock (:func:`run_lock`), so that no live save
    is in progress.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            if child.name.startswith(TMP_PREFIX):
                _rmtree(child)
                removed += 1
            elif depth > 1:
                removed += remove_stale_temps(child, depth - 1)
    return removed


def _size(n: float) -> str:
    """``'1.2 GiB'``, ``'340.0 MiB'``, ``'12.0 KiB'``: the largest unit that keeps n >= 1."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def describe_disk(path: Path) -> str:
    """``'1.2 GiB free of 50.0 GiB'`` for the file system holding ``path`` (or ``''``)."""
    import shutil

    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return ""
    return f"{_size(usage.free)} free of {_size(usage.total)}"


#: errno values that mean the environment refused a write (full disk, quota, permissions,
#: read-only file system): the user's to fix, never a bug.
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}
)


def disk_failure(exc: BaseException) -> tuple[int, str, str | None] | None:
    """``(errno, reason, file)`` when ``exc`` is a write the environment refused, else None.

    Understands a plain :class:`OSError` and the :class:`shutil.Error` that ``copytree``
    raises, whose errors are ``(src, dst, "[Errno 28] No space left on device")`` entries
    (the first such entry is taken).
    """
    import re
    import shutil

    if isinstance(exc, shutil.Error):
        entries = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        for entry in entries:
            if not (isinstance(entry, tuple | list) and len(entry) == 3):
                continue
            found = re.search(r"\[Errno (\d+)\]\s*([^:'\]]*)", str(entry[2]))
            if found and int(found.group(1)) in DISK_ERRNOS:
                code = int(found.group(1))
                return code, found.group(2).strip() or os.strerror(code), str(entry[1])
        return None
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        name = exc.filename if exc.filename is not None else None
        return int(exc.errno), exc.strerror or os.strerror(exc.errno), name and str(name)
    return None


def _written(what: str | None, target: str | None) -> str:
    if what and target:
        return f"{what} ({target})"
    return what or target or "a file"


def disk_error(
    exc: BaseException, what: str | None = None, path: Path | str | None = None
) -> SaveError | None:
    """The :class:`SaveError` to show for a refused write, naming the file and the free space.

    Args:
        exc: what the write raised (an :class:`OSError` or a :class:`shutil.Error`).
        what: what was being written, e.g. ``"the prepared data"`` (``None``: just the file).
        path: the file or folder written, when ``exc`` does not name one.

    Returns:
        ``None`` when ``exc`` is not a refused write (a bug, a missing file...).
    """
    found = disk_failure(exc)
    if found is None:
        return None
    code, reason, name = found
    if name and TMP_PREFIX in name and path is not None:  # a temporary folder: name the real one
        name = str(Path(path) / Path(name).name)
    target = name or (str(path) if path is not None else None)
    disk = describe_disk(Path(target).parent) if target else ""
    full = code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return SaveError(
        f"Cannot write {_written(what, target)}: {reason}"
        + (f"; {disk} there" if disk else "")
        + ".",
        where=target,
        hint=(
            "free disk space, or write elsewhere with paths.output_dir=/a/bigger/disk (or "
            "TUNESMITH_OUTPUT=...); then re-run the same command to continue."
            if full
            else "fix the permissions, or write elsewhere with paths.output_dir=... "
            "(or TUNESMITH_OUTPUT=...)."
        ),
    )


def check_writable(directory: Path, what: str = "the run") -> None:
    """Raise :class:`SaveError` unless files can be created in ``directory`` (made if needed)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / ".tunesmith-write-test") as tmp:
            tmp.write_bytes(b"ok")
        (directory / ".tunesmith-write-test").unlink()
    except OSError as exc:
        raise SaveError(
            f"Cannot write {what} to {directory}: {exc.strerror or exc}",
            where=str(directory),
            hint="pick a writable place with paths.output_dir=... (or TUNESMITH_OUTPUT=...), "
            "or fix the directory's permissions.",
        ) from exc


@contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory, so two processes never write one run.

    The operating system drops the lock when the process ends, however it ends (SIGKILL
    included), so a killed run never leaves a stale lock.

    Raises:
        TunesmithError: another process holds the lock.
    """
    import fcntl

    path = Path(directory) / ".lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise TunesmithError(
                f"This run is already running (process {holder}).",
                where=str(directory),
                hint="wait for it to end, or stop it (Ctrl-C saves a checkpoint); to run "
                "something else alongside, give it another name: run_name=...",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_checkpoint_note(directory: Path) -> dict[str, Any] | None:
    """What ``last.json`` in a checkpoint directory says about ``last.ckpt`` (or ``None``)."""
    directory = Path(directory)
    try:
        info = json.loads((directory / CHECKPOINT_NOTE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and (directory / "last.ckpt").exists() else None


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file written by tunesmith."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Run:
    """What every stage of one run shares.

    Attributes:
        cfg: the resolved run config.
        dir: the run directory (Hydra's output dir); everything the run writes goes here.
        plugins: the plugin manager.
        model: the model being tuned, once a stage has built it.
        tokenizer: its tokenizer.
        trained: whether the model in memory was trained in this process.
        metrics: what stages report; written to ``metrics.json`` by the evaluate stage.
    """

    cfg: DictConfig
    dir: Path
    plugins: TunesmithPluginManager
    model: Any = None
    tokenizer: Any = None
    trained: bool = False
    splits: dict[str, list[dict]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- paths
    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def artifact_dir(self) -> Path:
        """Where the train stage saves the adapter or the tuned model."""
        return self.dir / "artifact"

    @property
    def hook(self):  # noqa: ANN201 - pluggy's HookRelay
        return self.plugins.hook

    # ----------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """What ``run_state.json`` says: ``status`` (new, running, interrupted, failed,
        finished), ``stages_done``, and for a stopped run the ``error`` it stopped with."""
        path = self.dir / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"stages_done": [], "status": "new"}
        except ValueError:  # written atomically, so only a hand edit can break it
            log.warning("%s is not valid JSON; treating the run as new", path)
            return {"stages_done": [], "status": "new"}
        state.setdefault("stages_done", [])
        state.setdefault("status", "new")
        return state

    def mark(
        self,
        stage: str | None = None,
        status: str | None = None,
        undo: list[str] | None = None,
        **extra: Any,
    ) -> None:
        """Record progress in ``run_state.json`` (atomically).

        Args:
            stage: a stage that just finished.
            status: the run's new status.
            undo: stages to mark as not done (they are about to run again).
            **extra: other fields to record (``error=...``); ``None`` removes a field.
        """
        state = self.state()
        if undo:
            state["stages_done"] = [s for s in state["stages_done"] if s not in undo]
        if stage and stage not in state["stages_done"]:
            state["stages_done"].append(stage)
        if status:
            state["status"] = status
        for key, value in extra.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        write_json(self.dir / STATE_FILE, state)

    # ----------------------------------------------------------------- model
    def build_base(self, method_load: bool = True) -> tuple[Any, Any]:
        """Build a fresh base model and tokenizer through the ``tunesmith_build_model`` hook.

        Args:
            method_load: load the base the way the run's method asks
                (``tunesmith_model_load_kwargs``: e.g. 4-bit for ``method=qlora``); ``False``
                loads it plainly (e.g. to merge an adapter into full-precision weights).
        """
        from framework.model.loading import method_load_kwargs

        name = str(self.cfg.model.name)
        self.plugins.require("model", name)
        method_name = str((self.cfg.get("method") or {}).get("name", ""))
        info = self.plugins.describe("method", method_name)
        method = info if isinstance(info, Method) else None
        load_kwargs = None
        if method_load:
            load_kwargs = self.hook.tunesmith_model_load_kwargs(name=method_name, cfg=self.cfg)
        elif method is not None and method.base_bits:
            method = replace(method, base_bits=None)  # loaded plainly this time
        with method_load_kwargs(load_kwargs, method=method):
            result = self.hook.tunesmith_build_model(name=name, cfg=self.cfg)
        if result is None:
            raise TunesmithError(f"The plugin serving model '{name}' returned nothing.")
        return result

    def ensure_model(self) -> tuple[Any, Any]:
        """Return the base model and tokenizer, building them on first use."""
        if self.model is None:
            self.model, self.tokenizer = self.build_base()
        return self.model, self.tokenizer

    def load_tuned(self) -> tuple[Any, Any]:
        """Return the tuned model: the one in memory, or base + what the train stage saved."""
        if self.trained and self.model is not None:
            return self.model, self.tokenizer
        if not self.artifact_dir.exists():
            raise TunesmithError(
                "There is no trained model in this run directory.",
                where=str(self.artifact_dir),
                hint="run the train stage first (stages=[prepare,train,evaluate]), or point "
                "hydra.run.dir at a finished run.",
            )
        base, tokenizer = self.build_base()
        name = str(self.cfg.method.name)
        self.plugins.require("method", name)
        model = self.hook.tunesmith_load_method(
            name=name, base_model=base, path=self.artifact_dir, cfg=self.cfg
        )
        self.model, self.tokenizer, self.trained = model, tokenizer, True
        return model, tokenizer

    def saved_metrics(self) -> dict[str, Any]:
        """The metrics a previous evaluate stage wrote, or ``{}``."""
        path = self.dir / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def resolved_config(self) -> str:
        return OmegaConf.to_yaml(self.cfg, resolve=True)

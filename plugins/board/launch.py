"""Launch runs from the page: validate the form's overrides, then start a normal ``run.py``.

A launched run is exactly what the command line would start: ``python run.py <overrides>``
in the project folder, with ``TUNESMITH_OUTPUT`` set to the board's output root, so it gets
the same run directory and the same resume behaviour. The page shows that command.

Only overrides of known config groups and keys are accepted (checked against the composed
config by :func:`framework.config_check.check_command_line`); no ``hydra.*``, ``paths.*``
or ``plugins`` keys, no added (``+``) or deleted (``~``) keys, no sweeps, no ``${...}``
interpolations, and data files must lie inside the project. Arguments go to the process as
a list: no shell ever sees them.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.errors import ConfigError, TunesmithError
from plugins.board.files import OutsideRoot, inside

#: Config keys a form may never set (where things go, which code runs).
FORBIDDEN_PREFIXES = ("hydra", "paths", "plugins")
#: Data keys that name files: they must be inside the project.
DATA_PATH_KEYS = ("data.path", "data.val_path", "data.test_path")
#: What the form's fields set (field -> config key); group fields pick an option.
GROUP_FIELDS = ("data", "model", "method")
VALUE_FIELDS = {
    "data_path": "data.path",
    "lr": "optim.lr",
    "max_steps": "trainer.max_steps",
    "max_epochs": "trainer.max_epochs",
    "batch_size": "data.batch_size",
    "run_name": "run_name",
}
_compose_lock = threading.Lock()


class LaunchError(ConfigError):
    """The form asks for something a launched run may not do."""


@dataclass
class Job:
    """One launched run (and its resumes): its command, process and log."""

    id: str
    overrides: list[str]
    run_dir: Path
    log: Path
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)
    attempts: int = 1
    stopping: bool = False
    returncode: int | None = None

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``interrupted`` (stopped; resumable) or ``failed``."""
        if self.proc is not None and self.returncode is None:
            code = self.proc.poll()
            if code is None:
                return "stopping" if self.stopping else "running"
            self.returncode = code
        if self.returncode == 0:
            return "finished"
        if self.returncode in (130, 143, -signal.SIGINT, -signal.SIGTERM):
            return "interrupted"
        return "failed"


def overrides_from_form(form: dict[str, Any]) -> list[str]:
    """The overrides the launch form asks for, in a stable order."""
    out: list[str] = []
    for name in GROUP_FIELDS:
        value = str(form.get(name) or "").strip()
        if value:
            out.append(f"{name}={value}")
    for name, key in VALUE_FIELDS.items():
        value = str(form.get(name) if form.get(name) is not None else "").strip()
        if value:
            out.append(f"{key}={value}")
    stages = form.get("stages")
    if isinstance(stages, list) and stages:
        out.append("stages=[" + ",".join(str(s).strip() for s in stages) + "]")
    extra = form.get("extra") or ""
    lines = extra if isinstance(extra, list) else str(extra).splitlines()
    out.extend(line.strip() for line in lines if str(line).strip())
    return out


def check_overrides(
    overrides: list[str], recorded_stages: set[str], project_root: Path, data_dir: Path
) -> None:
    """Raise :class:`LaunchError` (or the config checker's ``ConfigError``) unless every
    override is a plain ``key=value`` of a known group or key that a page may set."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from framework.cli import CONFIG_DIR
    from framework.config_check import check_command_line

    parser = OverridesParser.create()
    for line in overrides:
        if line.startswith("-"):
            raise LaunchError(
                f"'{line}': command-line flags are not accepted from the page.",
                where=line,
                hint="give key=value overrides only.",
            )
        if "${" in line:
            raise LaunchError(
                f"'{line}': interpolations (${{...}}) are not accepted from the page.",
                where=line,
                hint="write the value itself.",
            )
        try:
            o = parser.parse_override(line)
        except HydraException as exc:
            raise LaunchError(
                f"Cannot read the override '{line}'.",
                where=line,
                hint=f"write key=value. ({str(exc).strip().splitlines()[-1]})",
            ) from None
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or o.package is not None:
            raise LaunchError(
                f"'{line}': only plain key=value overrides of existing keys are accepted.",
                where=line,
                hint="drop the +, ++, ~ or @package.",
            )
        if o.is_sweep_override():
            raise LaunchError(
                f"'{line}' is a sweep; the page launches one run.",
                where=line,
                hint="launch each value on its own, or run the sweep with python run.py -m.",
            )
        if key.split(".")[0] in FORBIDDEN_PREFIXES:
            raise LaunchError(
                f"'{key}' cannot be set from the page.",
                where=line,
                hint="hydra.*, paths.* and plugins are set where the board was started.",
            )
        if key == "stages":
            value = o.value()
            stages = [str(s) for s in value] if isinstance(value, list) else [str(value)]
            bad = [s for s in stages if s not in recorded_stages]
            if bad:
                raise LaunchError(
                    f"stages: {', '.join(bad)} cannot be launched from the page.",
                    where=line,
                    hint=f"pick among {', '.join(sorted(recorded_stages))}.",
                )
        if key in DATA_PATH_KEYS:
            _check_data_path(str(o.value()), line, project_root, data_dir)
    with _compose_lock:
        check_command_line(list(overrides), CONFIG_DIR)


def _check_data_path(value: str, line: str, project_root: Path, data_dir: Path) -> None:
    path = Path(value)
    for root in (project_root, data_dir):
        try:
            rel = path.resolve().relative_to(Path(root).resolve()) if path.is_absolute() else path
            inside(root, rel.as_posix())
            return
        except (OutsideRoot, ValueError):
            continue
    raise LaunchError(
        f"The data file '{value}' is not a file inside the project.",
        where=line,
        hint="upload it, or give a path under the project folder (e.g. data/uploads/mine.jsonl).",
    )


def run_dir_for(overrides: list[str], output_root: Path) -> Path:
    """The run directory ``python run.py <overrides>`` uses (Hydra's own rule, composed)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from framework.cli import CONFIG_DIR
    from framework.resolvers import register_resolvers

    register_resolvers()
    with _compose_lock:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        finally:
            GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_root)
    return Path(str(OmegaConf.select(cfg, "hydra.run.dir")))


def config_options() -> dict[str, list[str]]:
    """The options of the config groups the form offers (data, model, method, ...)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from framework.cli import CONFIG_DIR

    out: dict[str, list[str]] = {}
    with _compose_lock:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                loader = GlobalHydra.instance().config_loader()
                for group in (*GROUP_FIELDS, "optim", "evaluator"):
                    out[group] = sorted(loader.get_group_options(group))
        finally:
            GlobalHydra.instance().clear()
    return out


class Launcher:
    """Starts, watches, stops and resumes launched runs (one process each)."""

    def __init__(
        self,
        project_root: Path,
        output_root: Path,
        data_dir: Path,
        recorded_stages: set[str],
        python: str = sys.executable,
    ) -> None:
        self.project_root = Path(project_root)
        self.output_root = Path(output_root)
        self.data_dir = Path(data_dir)
        self.recorded_stages = set(recorded_stages)
        self.python = python
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.log_dir = self.output_root / ".board" / "launches"

    @property
    def from_checkout(self) -> bool:
        """Whether runs start as ``python run.py`` in a checkout (else the installed
        ``tunesmith`` command, in the project folder)."""
        return (self.project_root / "run.py").is_file()

    def argv(self, overrides: list[str]) -> list[str]:
        """The process a launched run is."""
        if self.from_checkout:
            return [self.python, str(self.project_root / "run.py"), *overrides]
        return [self.python, "-m", "tunesmith", *overrides]

    def _default_output(self) -> bool:
        return self.output_root.resolve() == (self.project_root / "outputs").resolve()

    def command(self, overrides: list[str]) -> str:
        """The equivalent command line, to show (and copy) in the page."""
        env = (
            ""
            if self._default_output()
            else f"TUNESMITH_OUTPUT={shlex.quote(str(self.output_root))} "
        )
        args = " ".join(shlex.quote(o) for o in overrides)
        program = "python run.py" if self.from_checkout else "tunesmith"
        return f"cd {shlex.quote(str(self.project_root))} && {env}{program} {args}".rstrip()

    def preview(self, form: dict[str, Any]) -> dict[str, Any]:
        """Validate the form; return its overrides, command line and run directory."""
        overrides = overrides_from_form(form)
        check_overrides(overrides, self.recorded_stages, self.project_root, self.data_dir)
        run_dir = run_dir_for(overrides, self.output_root)
        return {"overrides": overrides, "command": self.command(overrides), "run_dir": run_dir}

    def start(self, form: dict[str, Any]) -> Job:
        """Validate the form and start its run."""
        info = self.preview(form)
        with self.lock:
            for job in self.jobs.values():
                if job.run_dir == info["run_dir"] and job.status in ("running", "stopping"):
                    raise TunesmithError(
                        "This run is already running from the board.",
                        where=str(job.run_dir),
                        hint="stop it first, or give the new run another run_name.",
                    )
            job_id = uuid.uuid4().hex[:10]
            self.log_dir.mkdir(parents=True, exist_ok=True)
            job = Job(job_id, info["overrides"], info["run_dir"], self.log_dir / f"{job_id}.log")
            self._spawn(job)
            self.jobs[job_id] = job
        return job

    def _spawn(self, job: Job) -> None:
        env = {
            **os.environ,
            "TUNESMITH_OUTPUT": str(self.output_root),
            "PYTHONUNBUFFERED": "1",
            "HYDRA_FULL_ERROR": "0",
        }
        env.pop("TUNESMITH_DEBUG", None)
        with job.log.open("ab") as log:
            header = f"$ {self.command(job.overrides)}\n"
            log.write(header.encode())
            log.flush()
            job.proc = subprocess.Popen(
                self.argv(job.overrides),
                cwd=self.project_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the board's own Ctrl-C does not reach it
            )
        job.returncode = None
        job.stopping = False

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def stop(self, job_id: str) -> Job:
        """Send the graceful interrupt (SIGINT: a checkpoint is saved, then the run exits)."""
        job = self.get(job_id)
        if job.status == "running" and job.proc is not None:
            job.stopping = True
            job.proc.send_signal(signal.SIGINT)
        return job

    def resume(self, job_id: str) -> Job:
        """Run the same command again: the run continues from where it stopped."""
        job = self.get(job_id)
        with self.lock:
            if job.status in ("running", "stopping"):
                return job
            job.attempts += 1
            self._spawn(job)
        return job

    def shutdown(self) -> None:
        """Nothing is killed: launched runs go on when the board stops (they save anyway)."""

    def read_log(self, job_id: str, offset: int = 0, limit: int = 256_000) -> tuple[str, int]:
        """The log from byte ``offset``: ``(text, next offset)``."""
        job = self.get(job_id)
        try:
            with job.log.open("rb") as f:
                f.seek(max(0, int(offset)))
                data = f.read(limit)
        except OSError:
            return "", offset
        return data.decode("utf-8", errors="replace"), max(0, int(offset)) + len(data)

    def describe(self, job: Job) -> dict[str, Any]:
        try:
            run_path = job.run_dir.resolve().relative_to(self.output_root.resolve()).as_posix()
        except ValueError:
            run_path = None
        return {
            "id": job.id,
            "status": job.status,
            "returncode": job.returncode,
            "attempts": job.attempts,
            "overrides": job.overrides,
            "command": self.command(job.overrides),
            "run_dir": str(job.run_dir),
            "run_path": run_path,
            "started": job.started,
        }


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


def upload_name(name: str, suffixes: list[str]) -> str:
    """Check an uploaded file's name: a plain file name with a data-file suffix.

    Raises:
        LaunchError: a path, odd characters, or a suffix no file plugin reads.
    """
    base = str(name or "")
    if not _NAME.match(base) or ".." in base:
        raise LaunchError(
            f"'{name}' is not a plain file name.",
            where="upload",
            hint="name the file with letters, digits, '.', '_' or '-' (e.g. mine.jsonl).",
        )
    if not any(base.lower().endswith(s.lower()) for s in suffixes):
        raise LaunchError(
            f"'{name}' is not a data file tunesmith reads.",
            where="upload",
            hint=f"give a file ending in {', '.join(suffixes)}.",
        )
    return base

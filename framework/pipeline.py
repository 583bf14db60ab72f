"""The pipeline: build the plugin manager, then run each stage of ``cfg.stages`` in order.

Re-running a command finds the same run directory, and :func:`plan_stages` decides what to
do with what is already there:

* an unfinished run (interrupted, killed, failed) continues: stages already done are
  skipped and training resumes from ``last.ckpt``;
* a finished run is never silently overwritten. The same command again only says it is
  finished; a larger ``trainer.max_steps`` / ``trainer.max_epochs`` *extends* it (training
  continues from its last checkpoint, then the later stages run again); changed
  ``evaluator.*`` / ``export.*`` settings re-run those stages; any other change is refused
  with the ways to start a new run;
* ``force=true`` starts the run over in place.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from framework import library_logs
from framework.descriptors import Stage
from framework.distributed import EVERY_RANK_STAGES, is_global_zero
from framework.errors import ConfigError, TunesmithError
from framework.manager import build_plugin_manager
from framework.run import (
    STATE_FILE,
    Run,
    SaveError,
    check_writable,
    read_checkpoint_note,
    read_jsonl,
    remove_stale_temps,
    run_lock,
    write_text,
)
from framework.stops import RunInterrupted

log = logging.getLogger(__name__)

#: Keys whose change says nothing about the run's result (never blocks a re-run).
HARMLESS_KEYS = (
    "force",
    "stages",
    "paths.",
    "plugins",
    "serve.",
    "board.",
    "callbacks.",
    "logger.",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
)
#: Keys that set how long training runs: raising them extends a finished run.
BUDGET_KEYS = ("trainer.max_steps", "trainer.max_epochs")
#: Keys that only a later stage reads: changing them re-runs that stage.
STAGE_KEYS = {"evaluator.": "evaluate", "export.": "export"}


def seed_everything(seed: int, torch: bool = True) -> None:
    """Seed Python, NumPy and torch (through Lightning) for a reproducible run.

    Args:
        seed: the seed.
        torch: also seed NumPy and torch (imports them; a prepare-only run does without).
    """
    random.seed(seed)
    if torch:
        from lightning.pytorch import seed_everything as _seed

        library_logs.tidy()  # Lightning is imported now: drop its duplicate console handler
        _seed(seed, workers=True, verbose=False)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys whose value differs between two resolved configs (harmless ones left out).

    A config saved before ``objective`` became a group (``objective: sft``) reads as
    ``objective: {name: sft}``.
    """
    if isinstance(saved.get("objective"), str):
        saved = {**saved, "objective": {"name": saved["objective"]}}
    old, new = _flatten(saved), _flatten(current)
    changed = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(HARMLESS_KEYS) or key in HARMLESS_KEYS:
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changed.append(key)
    return changed


def _saved_config(run: Run) -> dict[str, Any] | None:
    path = run.dir / "config.yaml"
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def checkpoint_dir(run: Run) -> Path:
    """Where the run's ``last.ckpt`` lives (the checkpoint callback's ``dirpath``)."""
    node = OmegaConf.select(run.cfg, "callbacks.model_checkpoint.dirpath", default=None)
    return Path(str(node)) if node else run.dir / "checkpoints"


def trained_steps(run: Run) -> int | None:
    """The step of the run's last checkpoint (from ``last.json``), if there is one."""
    info = read_checkpoint_note(checkpoint_dir(run))
    return None if info is None else int(info.get("step", 0))


def _epoch_limit(trainer: dict[str, Any]) -> float:
    epochs = trainer.get("max_epochs")
    steps = trainer.get("max_steps", -1)
    if epochs is None:  # Lightning's default: 1000 epochs unless max_steps is set
        return float("inf") if steps not in (None, -1) else 1000
    return float("inf") if int(epochs) == -1 else int(epochs)


def budget_extends(saved: dict[str, Any], current: dict[str, Any], step: int | None) -> bool:
    """Whether ``current``'s training budget reaches beyond where the saved run stopped."""
    old_t, new_t = saved.get("trainer") or {}, current.get("trainer") or {}
    new_steps = int(new_t.get("max_steps", -1) or -1)
    old_steps = int(old_t.get("max_steps", -1) or -1)
    if new_steps > 0 and step is not None and new_steps <= step:
        return False
    stopped_by_steps = old_steps > 0 and step is not None and step >= old_steps
    if stopped_by_steps:
        return new_steps <= 0 or new_steps > step
    return _epoch_limit(new_t) > _epoch_limit(old_t)


def _how_to_go_on(run: Run) -> str:
    return (
        "to start a new run, give it a name: run_name=<new name> (or hydra.run.dir=<dir>); "
        "to extend this one, raise the training budget (e.g. trainer.max_epochs=N or "
        "trainer.max_steps=N: training continues from its last checkpoint); "
        "to redo it from scratch in place, add force=true."
    )


def plan_stages(run: Run, stages: list[str], then_session: bool = False) -> list[str]:
    """The stages to run now, given what the run directory already holds.

    Args:
        run: the run.
        stages: the recorded stages asked for (session stages left out).
        then_session: a session stage (chat, serve) follows; a finished run is then only
            noted, not explained at length.

    Returns:
        The stages to run, in order; empty when the run is finished and nothing asks for more.

    Raises:
        ConfigError: the directory holds a finished run made with a different config.
    """
    cfg = run.cfg
    state = run.state()
    status, done = state["status"], list(state["stages_done"])
    if cfg.get("force", False):
        if status != "new":
            log.warning("force=true: starting %s over (checkpoints removed)", run.dir)
            shutil.rmtree(checkpoint_dir(run), ignore_errors=True)
            (run.dir / STATE_FILE).unlink(missing_ok=True)
        return stages
    if status == "new":
        return stages

    saved = _saved_config(run)
    current = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(current, dict)
    changed = config_changes(saved, current) if saved is not None else []
    budget = [k for k in changed if k in BUDGET_KEYS]
    by_stage = {
        stage: [k for k in changed if k.startswith(prefix)] for prefix, stage in STAGE_KEYS.items()
    }
    other = [k for k in changed if k not in budget and not any(k in ks for ks in by_stage.values())]
    step = trained_steps(run)

    rerun: set[str] = {s for s in stages if s not in done}
    extends = status != "finished" or (saved is not None and budget_extends(saved, current, step))
    if budget and "train" in stages and extends:
        rerun.add("train")
    for stage, keys in by_stage.items():
        if keys and stage in stages:
            rerun.add(stage)

    if status == "finished":
        if other:
            raise ConfigError(
                "This run directory holds a finished run made with a different config "
                f"(changed: {', '.join(other[:8])}{' ...' if len(other) > 8 else ''}). "
                "Nothing was overwritten.",
                where=str(run.dir),
                hint=_how_to_go_on(run),
            )
        if not rerun:
            at = f" after {step} training steps" if step is not None else ""
            why = ""
            if budget:
                why = (
                    f"\n  The new budget ({', '.join(f'{k}={OmegaConf.select(cfg, k)}' for k in budget)}) "
                    "does not go beyond what it already trained."
                )
            holds = (
                "its results are in metrics.json there"
                if (run.dir / "metrics.json").exists()
                else f"stages done: {', '.join(done)}"
            )
            if then_session:
                log.info("Already done in %s: %s.", run.dir, ", ".join(stages))
                return []
            log.warning(
                "This run is already finished%s: %s%s\n  Nothing was redone or overwritten; "
                "%s.\n  What next: %s",
                at,
                run.dir,
                why,
                holds,
                _how_to_go_on(run),
            )
            return []
    elif other:
        log.warning(
            "Continuing an unfinished run whose config changed since it started: %s",
            ", ".join(other),
        )

    # Once a stage runs again, every later stage runs again too (it reads the earlier output).
    first = min((stages.index(s) for s in rerun), default=len(stages))
    plan = stages[first:]
    if status == "finished":
        if "train" in plan and "train" in rerun and budget:
            log.info(
                "Extending the finished run %s: training continues from its last checkpoint "
                "(step %s) with %s.",
                run.dir,
                step,
                ", ".join(f"{k}={OmegaConf.select(cfg, k)}" for k in budget),
            )
        elif changed:
            log.info(
                "Re-running %s of the finished run %s (changed: %s).",
                ", ".join(plan),
                run.dir,
                ", ".join(changed),
            )
        else:
            log.info("Running the stages not done yet in %s: %s.", run.dir, ", ".join(plan))
    else:
        skipped = stages[:first]
        log.info(
            "Continuing the %s run in %s%s%s.",
            {"running": "killed", "failed": "stopped"}.get(status, status),
            run.dir,
            f" (already done: {', '.join(skipped)})" if skipped else "",
            f"; its last checkpoint is at step {step}" if step is not None else "",
        )
    return plan


def _interruption(exc: BaseException) -> TunesmithError | None:
    """A :class:`RunInterrupted` for a Lightning ``SIGTERMException`` or a forced Ctrl-C exit."""
    import signal

    sigterm = type(exc).__name__ == "SIGTERMException"
    # Lightning turns a second Ctrl-C during fit into sys.exit(1)
    ctrl_c = isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt)
    if not (sigterm or ctrl_c):
        return None
    signum = signal.SIGTERM if sigterm else signal.SIGINT
    return RunInterrupted(
        f"The run was stopped by {'SIGTERM' if sigterm else 'Ctrl-C'}.",
        hint="re-run the same command to continue from the last checkpoint.",
        signum=signum,
    )


def objective_name(cfg: DictConfig) -> str | None:
    """The objective's name: ``objective.name`` when the objective is a config group,
    else ``objective`` itself."""
    node = cfg.get("objective")
    if node is None:
        return None
    if isinstance(node, DictConfig):
        name = node.get("name")
        return None if name is None else str(name)
    return str(node)


def _data_file_names(cfg: DictConfig) -> list[tuple[str, str]]:
    """``(file, config key)`` for every data file a run reads, resolved as the prepare stage
    resolves them; a path with a suffix that matches no file is given as written (the
    prepare stage reports missing files)."""
    from framework.data.prepare import resolve_files

    data = cfg.get("data")
    if data is None:
        return []
    specs: list[tuple[Any, str]] = []
    sources = data.get("sources") or []
    if sources:
        specs += [
            (
                entry.get("path") if isinstance(entry, DictConfig) else None,
                f"data.sources[{i}].path",
            )
            for i, entry in enumerate(sources)
        ]
    else:
        specs.append((data.get("path"), "data.path"))
    specs += [(data.get(f"{split}_path"), f"data.{split}_path") for split in ("val", "test")]
    found: list[tuple[str, str]] = []
    for spec, key in specs:
        if spec is None or spec == "???":
            continue
        items = list(spec) if isinstance(spec, ListConfig | list | tuple) else [spec]
        for item in items:
            try:
                found += [(str(f), key) for f in resolve_files(item, key=key)]
            except TunesmithError:  # missing: the prepare stage says so, if it reads it
                if Path(str(item)).suffix and not any(c in str(item) for c in "*?["):
                    found.append((str(item), key))
    return found


def configured_names(cfg: DictConfig, keys: set[str]) -> list[tuple[str, str, str]]:
    """The plugin names ``cfg`` picks for the stage ``keys``, as ``(stage key, name, config
    key)`` triples (what :meth:`TunesmithPluginManager.require_all` checks)."""
    wanted: list[tuple[str, str, str]] = []
    if "file" in keys:
        wanted += [("file", name, key) for name, key in _data_file_names(cfg)]
    if "format" in keys and cfg.get("data") is not None:
        sources = cfg.data.get("sources") or []
        default = cfg.data.get("format")
        for i, entry in enumerate(sources):
            fmt = entry.get("format") if isinstance(entry, DictConfig) else None
            if fmt is not None:
                wanted.append(("format", str(fmt), f"data.sources[{i}].format"))
        if default is not None and (
            not sources
            or any(not isinstance(e, DictConfig) or e.get("format") is None for e in sources)
            or cfg.data.get("val_path")
            or cfg.data.get("test_path")
        ):
            wanted.append(("format", str(default), "data.format"))
    if "objective" in keys and (name := objective_name(cfg)) is not None:
        wanted.append(("objective", name, "objective"))
    for key, path in (("model", "model.name"), ("method", "method.name")):
        if key in keys and (name := OmegaConf.select(cfg, path, default=None)) is not None:
            wanted.append((key, str(name), path))
    for key, path in (("metric", "evaluator.metrics"), ("export", "export.formats")):
        if key in keys:
            names = OmegaConf.select(cfg, path, default=None) or []
            wanted += [(key, str(n), f"{path}[{i}]") for i, n in enumerate(names)]
    return wanted


def check_names(cfg: DictConfig, plugins: Any, stages: list[str]) -> None:
    """Check, before any work, every plugin name the stages about to run will use.

    The stage names first; then, for each stage, the names its :class:`~framework.Stage`
    descriptor says it ``uses``: the data files' types (by suffix), ``data.format`` and
    every ``data.sources[*].format``, ``objective``, ``model.name``, ``method.name``,
    ``evaluator.metrics``, ``export.formats``. Names only stages that will not run read are
    not checked (``stages=[prepare]`` does not look at ``evaluator.metrics``).

    Raises:
        ConfigError: one error listing every name that no plugin serves.
    """
    wanted = [("stage", stage, "stages") for stage in stages]
    keys: set[str] = set()
    for stage in stages:
        info = plugins.describe("stage", stage)
        if isinstance(info, Stage):
            keys.update(info.uses)
    if "metric" in keys and not OmegaConf.select(cfg, "evaluator.metrics", default=None):
        raise ConfigError(
            "No metric is selected.",
            where="evaluator.metrics",
            hint="e.g. evaluator.metrics=[perplexity,exact_match]",
        )
    plugins.require_all(wanted + configured_names(cfg, keys))


def run_pipeline(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the stages named in ``cfg.stages`` and return the run's metrics.

    Args:
        cfg: the composed run config.
        run_dir: where the run writes; defaults to ``cfg.paths.run_dir`` (Hydra's output
            directory for the job).

    Returns:
        The metrics the stages reported (``{"base": {...}, "tuned": {...}}`` after evaluate);
        for a finished run that had nothing to do, the metrics it saved.

    Raises:
        TunesmithError: bad input; :class:`framework.train.resilience.RunInterrupted` when a signal
            stopped training after saving a checkpoint.
    """
    library_logs.tidy()
    run_dir = Path(run_dir if run_dir is not None else cfg.paths.run_dir)
    from framework.config_check import missing_values

    missing = [k for k in missing_values(cfg) if not k.startswith("hydra.")]
    if missing:
        raise ConfigError(
            f"These config values must be given (they are ??? in the config): {', '.join(missing)}.",
            where=missing[0],
            hint=f"add {missing[0]}=<value> to the command.",
        )
    if is_global_zero():  # the others write nothing to the run directory
        check_writable(run_dir)
    plugins = build_plugin_manager(extra=list(cfg.get("plugins") or []))
    stages = [str(s) for s in cfg.stages]
    if not stages:
        raise ConfigError("No stage to run.", where="stages", hint="e.g. stages=[prepare,train]")
    check_names(cfg, plugins, stages)
    plugins.hook.tunesmith_check_config(cfg=cfg, plugins=plugins)  # plugins' own options

    sessions = plugins.sessions()
    # Session stages (chat, serve) use a run without changing it: they are not recorded in
    # run_state.json, run again every time, leave the run's config.yaml as it was, and do
    # not take the run's lock (a server may run for days beside other commands).
    run = Run(cfg=cfg, dir=run_dir, plugins=plugins)
    if not is_global_zero():
        return run_as_worker(run, stages)
    recorded = [s for s in stages if s not in sessions]
    plan: list[str] = []
    if recorded:
        with run_lock(run_dir):
            remove_stale_temps(run_dir)
            plan = plan_stages(run, recorded, then_session=len(recorded) < len(stages))
            if plan:
                _run_recorded(run, plan)
            elif run.state()["status"] != "finished":  # killed after its last stage ended
                run.mark(status="finished")
    elif not (run_dir / "config.yaml").exists():
        write_text(run_dir / "config.yaml", run.resolved_config())
    session_stages = [s for s in stages if s in sessions]
    if session_stages:
        seed_everything(int(cfg.seed))
        for stage in session_stages:
            log.info("stage: %s", stage)
            plugins.run_stage(stage, run)
    return run.metrics if plan or session_stages else run.saved_metrics()


def _run_recorded(run: Run, plan: list[str]) -> None:
    """Run the recorded stages of ``plan`` and keep ``run_state.json`` up to date."""
    try:
        write_text(run.dir / "config.yaml", run.resolved_config())
    except OSError as exc:
        raise SaveError(f"Cannot write the run's config: {exc}", where=str(run.dir)) from exc
    seed_everything(int(run.cfg.seed), torch=plan != ["prepare"])
    run.mark(status="running", undo=plan, error=None)
    try:
        for stage in plan:
            log.info("stage: %s", stage)
            run.plugins.run_stage(stage, run)
            run.mark(stage=stage)
    except BaseException as exc:
        interrupted = _interruption(exc)
        if isinstance(exc, KeyboardInterrupt):  # run.py reports it; callers may catch it
            run.mark(status="interrupted", error="stopped by Ctrl-C")
        elif interrupted is not None or isinstance(exc, RunInterrupted):
            run.mark(status="interrupted", error=str(interrupted or exc).splitlines()[0])
            if interrupted is not None:
                raise interrupted from exc
        else:
            run.mark(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    run.mark(status="finished")
    run.hook.tunesmith_run_end(run=run, metrics=run.metrics)
    return run.metrics


class PreparedSplits(Mapping[str, list[dict]]):
    """The splits rank 0 prepares (``data/{train,val,test}.jsonl``), read when first used.

    A worker on another node is started by the cluster, not by rank 0, so it may start before
    rank 0 has prepared the data. It must not read the splits (nor prepare them itself)
    until then. The data module first reads them in ``setup()``, which Lightning calls after
    every process has joined the process group (``trainer.fit`` -> ``barrier("pre_setup")``),
    and rank 0 joins only from its train stage, after prepare: Lightning's rendezvous is the
    wait.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self._splits: dict[str, list[dict]] | None = None

    def _load(self) -> dict[str, list[dict]]:
        if self._splits is None:
            from framework.data.prepare import SPLITS

            paths = [self.run.data_dir / f"{s}.jsonl" for s in SPLITS]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise TunesmithError(
                    f"This process (not global rank 0) finds no prepared data: {missing[0]} "
                    "is missing.",
                    where=str(self.run.dir),
                    hint="every node must see the same run directory (a shared filesystem), "
                    "e.g. hydra.run.dir=/shared/runs/<name> on each node's command.",
                )
            self._splits = {s: read_jsonl(p) for s, p in zip(SPLITS, paths, strict=True)}
        return self._splits

    def __getitem__(self, split: str) -> list[dict]:
        return self._load()[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def run_as_worker(run: Run, stages: list[str]) -> dict[str, Any]:
    """A process of rank > 0 under a multi-process strategy: join the training stages only.

    Rank 0 prepares the data before training (before it starts the other processes of its
    node; other nodes wait for it, see :class:`PreparedSplits`), and saves, evaluates and
    exports after training; this process writes nothing to the run's state.
    """
    seed_everything(int(run.cfg.seed))
    run.splits = PreparedSplits(run)  # type: ignore[assignment]
    for stage in stages:
        if stage in EVERY_RANK_STAGES:
            run.plugins.run_stage(stage, run)
    return run.metrics


def to_container(cfg: DictConfig | dict | None) -> dict:
    """A plain resolved dict of a config node (for passing to library constructors)."""
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)

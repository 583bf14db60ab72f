"""The train stage: apply the method, fit with a real ``lightning.Trainer``, save the result."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from framework.data.prepare import load_splits
from framework.descriptors import Method
from framework.distributed import is_global_zero
from framework.errors import ConfigError
from framework.model import hardware
from framework.run import Run, atomic_path, write_json
from framework.train.checkpointing import SHARDED_STRATEGIES  # noqa: F401 (also used by tests)

log = logging.getLogger(__name__)


def count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts.

    Tied weights count once; a bitsandbytes 4-bit tensor counts the parameters it packs
    (two per byte of storage), not its bytes.
    """
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            storage = getattr(p, "quant_storage", None)
            n *= 2 * (getattr(storage, "itemsize", 1) or 1)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass instead of keeping them (less memory).

    Uses the model's own ``gradient_checkpointing_enable`` (non-reentrant, so frozen inputs
    need no gradient tricks); works through a PEFT wrapper.

    Raises:
        ConfigError: the model does not support gradient checkpointing.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"{type(inner).__name__} does not support gradient checkpointing.",
            where="method.gradient_checkpointing",
            hint="set method.gradient_checkpointing=false",
        )
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def trainer_kwargs(node: DictConfig) -> dict[str, Any]:
    """``lightning.Trainer`` arguments from ``cfg.trainer``.

    A value with a ``_target_`` (``trainer.strategy`` in ``trainer=fsdp``) is instantiated,
    as is each such entry of a list (``trainer.plugins``); the rest are plain values.
    """
    from omegaconf import ListConfig, OmegaConf

    def convert(value: Any) -> Any:
        if isinstance(value, DictConfig) and "_target_" in value:
            return instantiate(value)
        if isinstance(value, ListConfig):
            return [convert(v) for v in value]
        if isinstance(value, DictConfig):
            return OmegaConf.to_container(value, resolve=True)
        return value

    return {str(key): convert(node[key]) for key in node}


def _instantiate_all(node: DictConfig | None, group: str = "callbacks") -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group (``None`` entries skipped).

    Raises:
        ConfigError: an entry cannot be built (a missing package, a wrong argument).
    """
    if not node:
        return []
    built = []
    for name, value in node.items():
        if value is None or "_target_" not in value:
            continue
        try:
            built.append(instantiate(value))
        except Exception as exc:  # Hydra wraps the library's own error
            cause = exc.__cause__ or exc
            raise ConfigError(
                f"Could not build {group}.{name} ({value._target_}): {cause}",
                where=f"{group}.{name}",
                hint="install the package it names (see docs/methods.md), fix the argument, "
                f"or drop it with {group}.{name}=null.",
            ) from exc
    return built


def resolve_precision(cfg: DictConfig) -> hardware.Choice:
    """``trainer.precision`` for this run: the config's, or ``auto`` chosen for the device
    (:mod:`framework.model.hardware`; logged once with the reason)."""
    choice, _device = hardware.run_precision(cfg.get("trainer"))
    if choice.automatic:
        hardware.log_choice(choice)
    return choice


def build_trainer(run: Run) -> Any:
    """A ``lightning.Trainer`` from ``cfg.trainer``, ``cfg.logger`` and ``cfg.callbacks``.

    ``trainer.precision: auto`` is resolved for the device (:func:`resolve_precision`).
    """
    import lightning.pytorch as pl

    cfg = run.cfg
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        kwargs = trainer_kwargs(cfg.trainer)
    except Exception as exc:  # a strategy that cannot be built (deepspeed not installed...)
        raise ConfigError(
            f"Could not build the trainer's strategy: {exc.__cause__ or exc}",
            where="trainer.strategy",
            hint="install what it names, or pick another trainer=... option.",
        ) from exc
    kwargs["precision"] = resolve_precision(cfg).value
    callbacks = _instantiate_all(cfg.get("callbacks"), "callbacks")
    for extra in run.hook.tunesmith_configure_callbacks(cfg=cfg, run=run):
        callbacks.extend(extra or [])
    from framework.train.loggers import start_training_loggers

    # the resolved config goes to every logger; a resumed run continues its tracker runs
    loggers = start_training_loggers(run, resume=last_checkpoint(run) is not None) or False
    try:
        return pl.Trainer(
            default_root_dir=str(run.dir), logger=loggers, callbacks=callbacks, **kwargs
        )
    except TypeError as exc:
        raise ConfigError(
            f"The trainer config has a key lightning.Trainer does not take: {exc}",
            where="trainer.*",
            hint="use the names of lightning.Trainer's arguments (trainer.max_steps=...).",
        ) from exc
    except (MisconfigurationException, ValueError) as exc:
        raise ConfigError(
            f"lightning.Trainer rejected the trainer config: {exc}",
            where="trainer.* (accelerator, devices, strategy, precision)",
            hint="FSDP and DeepSpeed need GPUs (trainer=fsdp / trainer=deepspeed); on a CPU use "
            "trainer=ddp trainer.accelerator=cpu trainer.devices=2, or trainer=default.",
        ) from exc


def last_checkpoint(run: Run) -> Path | None:
    """The checkpoint to resume from, if an earlier attempt of this run left one."""
    path = run.dir / "checkpoints" / "last.ckpt"
    return path if path.exists() else None


def cpu_busy_message(load: float, cores: int, threads: int) -> str | None:
    """Why training on this CPU may be slow now, or None.

    ``load`` is the 1-minute load average (this process included), ``cores`` the CPUs this
    process may run on, ``threads`` torch's intra-op threads. With one thread per core,
    torch's threads wait on each other whenever another busy process takes a core from one
    of them: on a 2-core machine a training step was measured 5-20x slower.
    """
    others = load - 1.0  # this process is one runnable task
    if threads <= 1 or others < max(1.0, 0.5 * cores):
        return None
    return (
        f"Other processes keep this CPU busy (load average {load:.1f} on {cores} cores) and "
        f"torch uses {threads} threads: they wait on each other, so training may be several "
        "times slower. On a shared machine try OMP_NUM_THREADS=1 (docs/performance.md)."
    )


def warn_if_cpu_busy() -> None:
    """Log :func:`cpu_busy_message` for this machine, when there is one."""
    import torch

    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on this platform
        return
    message = cpu_busy_message(load, cores, torch.get_num_threads())
    if message:
        log.warning("%s", message)


def train(run: Run) -> None:
    """Run the train stage.

    Under a multi-process strategy (``trainer=ddp``...) every process runs this; only the
    process of global rank 0 saves the result and writes the summary.
    """
    import time

    started = time.perf_counter()
    splits = load_splits(run)
    # A resumed run keeps the precision and dtype its first attempt chose (even elsewhere).
    earlier = _earlier_summary(run) if last_checkpoint(run) is not None else {}
    with hardware.pinned(hardware.pins_from(earlier.get("hardware"))):
        _train(run, splits, started)


def _earlier_summary(run: Run) -> dict[str, Any]:
    """What an earlier attempt of this run wrote to ``train_summary.json`` (``{}``: none)."""
    import json

    try:
        loaded = json.loads((run.dir / "train_summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _hardware_record(run: Run, model: Any) -> dict[str, Any]:
    """The ``hardware`` entry of ``train_summary.json``: device, precision, dtype, threads.

    On a CPU this also sets torch's thread count (once per process; a model plugin that
    loads without ``load_pretrained`` gets it here).
    """
    precision, device = hardware.run_precision(run.cfg.get("trainer"))
    info = run.plugins.describe("method", str(run.cfg.method.name))
    dtype = hardware.run_dtype(run.cfg, info if isinstance(info, Method) else None)
    threads = hardware.configure_threads() if device.kind == "cpu" else None
    record = hardware.record(precision, dtype, device, threads)
    loaded = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if loaded is not None:
        record["loaded_dtype"] = str(loaded).removeprefix("torch.")
    return record


def _train(run: Run, splits: Any, started: float) -> None:
    """The train stage proper (see :func:`train`)."""
    import time

    from framework.data.datamodule import FineTuneDataModule
    from framework.data.precompute import precompute
    from framework.train.module import FineTuneModule, peak_rss_mb
    from framework.train.objective import describe_objective

    cfg = run.cfg
    base, tokenizer = run.ensure_model()
    method = str(cfg.method.name)
    run.plugins.require("method", method)
    describe_objective(cfg, run.plugins)  # served, and its options are its own
    model = run.hook.tunesmith_apply_method(name=method, model=base, cfg=cfg)
    if model is None:
        raise ConfigError(
            f"The plugin serving method '{method}' returned no model.",
            where=f"method={method}",
            hint="its tunesmith_apply_method must return the model to train.",
        )
    if cfg.method.get("gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    trainable, total = count_parameters(model)
    message = (
        f"method {method}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / max(total, 1):.2f}%)"
    )
    log.info("%s", message)
    run.metrics["parameters"] = {"trainable": trainable, "total": total}
    summary: dict[str, Any] = {
        "method": method,
        "trainable": trainable,
        "total": total,
        "trainable_percent": round(100 * trainable / max(total, 1), 4),
        "gradient_checkpointing": bool(cfg.method.get("gradient_checkpointing", False)),
        "hardware": _hardware_record(run, base),
        "status": "training",
    }
    if is_global_zero():
        write_json(run.dir / "train_summary.json", summary)

    datamodule = FineTuneDataModule(splits, cfg)
    datamodule.connect(tokenizer, run.plugins)
    # reference values computed once, by the model as training starts (tunesmith_precompute)
    precomputed = precompute(datamodule, model, run.dir)
    module = FineTuneModule(model, cfg, run.plugins, precomputed=precomputed)
    trainer = build_trainer(run)
    if type(trainer.accelerator).__name__ == "CPUAccelerator":
        warn_if_cpu_busy()
    ckpt = last_checkpoint(run)
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)

    to_save = consolidated_model(run, trainer, model)
    if not trainer.is_global_zero:
        return
    run.model, run.tokenizer, run.trained = to_save, tokenizer, True
    with atomic_path(run.artifact_dir) as tmp:
        tmp.mkdir()
        run.hook.tunesmith_save_method(
            name=method, model=to_save, tokenizer=tokenizer, path=tmp, cfg=cfg
        )
    logged = trainer.logged_metrics
    summary.update(
        status="finished",
        global_step=int(trainer.global_step),
        epochs=int(trainer.current_epoch),
        world_size=int(trainer.world_size),
        train_loss=_float(logged.get("train/loss")),
        val_loss=_float(logged.get("val/loss")),
        wall_time_s=round(time.perf_counter() - started, 2),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    write_json(run.dir / "train_summary.json", summary)
    plot_loss_curves(run)
    from framework.data.report import draw_pending_plots

    draw_pending_plots()  # the data report's histogram, left for after training


def consolidated_model(run: Run, trainer: Any, model: Any) -> Any:
    """The trained model with whole weights, ready for the save hook.

    On one device or under DDP that is ``model`` itself. Under a sharding strategy (FSDP,
    DeepSpeed) every process takes part in gathering the full state dict
    (``strategy.lightning_module_state_dict()``, ``state_dict_type: full``), and rank 0
    loads it into a fresh, unwrapped copy: base model + the same method.
    """
    if type(trainer.strategy).__name__ not in SHARDED_STRATEGIES:
        return model
    state = trainer.strategy.lightning_module_state_dict()
    if not trainer.is_global_zero:
        return None
    return rebuild_with_state(run, state)


def rebuild_with_state(run: Run, state: dict[str, Any], prefix: str = "model.") -> Any:
    """A fresh base model with the run's method applied, loaded with ``state`` (keys under
    ``prefix``, as in :class:`framework.train.module.FineTuneModule`'s state dict)."""
    method = str(run.cfg.method.name)
    base, _ = run.build_base()
    fresh = run.hook.tunesmith_apply_method(name=method, model=base, cfg=run.cfg)
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        missing, unexpected = fresh.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shapes differ: the weights were still sharded
        missing, unexpected = [str(exc)[:200]], []
    if unexpected or [k for k in missing if k not in dict(fresh.named_buffers())]:
        raise ConfigError(
            "The gathered weights do not fit the rebuilt model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}).",
            where="trainer.strategy",
            hint="for FSDP set trainer.strategy.state_dict_type=full; DeepSpeed stage 3 is not "
            "supported for saving (use stage 2).",
        )
    return fresh


def _float(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)


def read_logged_metrics(run: Run) -> list[dict[str, str]]:
    """Rows of the CSV logger's ``metrics.csv`` for this run (empty if there is none)."""
    rows: list[dict[str, str]] = []
    for path in sorted(run.dir.glob("logs/**/metrics.csv")):
        with path.open(encoding="utf-8") as f:
            rows.extend(csv.DictReader(f))
    return rows


def reward_series(rows: list[dict[str, str]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The logged ``rewards/*`` series (an objective's ``ctx.log``), by panel: ``accuracy``
    for the ``rewards/*accuracy*`` keys, ``rewards`` for the others (margin, chosen...)."""
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {"accuracy": {}, "rewards": {}}
    for row in rows:
        for key, value in row.items():
            if not value or "/rewards/" not in key:
                continue
            panel = "accuracy" if "accuracy" in key.rsplit("/", 1)[-1] else "rewards"
            panels[panel].setdefault(key, []).append((int(row["step"]), float(value)))
    return {name: series for name, series in panels.items() if series}


def plot_loss_curves(run: Run) -> Path:
    """Write ``loss_curve.png``: train and validation loss against step, and below it every
    ``rewards/*`` series the objective logged (preference objectives: reward accuracy in one
    panel, margin and the chosen/rejected rewards in another)."""
    rows = read_logged_metrics(run)
    series: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
    for row in rows:
        for key, points in series.items():
            if row.get(key):
                points.append((int(row["step"]), float(row[key])))
    extra = reward_series(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1 + len(extra), 1, figsize=(7, 4 + 2.5 * len(extra)), sharex=True, squeeze=False
    )
    ax = axes[0][0]
    for key, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if key == "val/loss" else None, label=key)
    if not any(series.values()):
        ax.text(
            0.5,
            0.5,
            "no loss was logged: the run was shorter than "
            f"trainer.log_every_n_steps={run.cfg.trainer.get('log_every_n_steps')}",
            ha="center",
            va="center",
            transform=ax.transAxes,
            wrap=True,
        )
    ax.set_ylabel("loss")
    ax.set_title(f"{run.cfg.model.name} / {run.cfg.method.name} / {run.cfg.data.name}")
    if any(series.values()):
        ax.legend()
    ax.grid(alpha=0.3)
    for (panel, curves), row in zip(extra.items(), axes[1:], strict=True):
        sub = row[0]
        for key, points in sorted(curves.items()):
            xs, ys = zip(*points, strict=True)
            sub.plot(xs, ys, marker="o" if key.startswith("val/") else None, label=key)
        if panel == "accuracy":
            sub.set_ylim(-0.05, 1.05)
        else:
            sub.axhline(0.0, color="grey", linewidth=0.8)
        sub.set_ylabel("reward accuracy" if panel == "accuracy" else "reward")
        sub.legend(fontsize="small")
        sub.grid(alpha=0.3)
    axes[-1][0].set_xlabel("optimizer step")
    path = run.dir / "loss_curve.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path

"""Which model is "tuned" and which is "base" for an evaluation, and their fingerprints."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, open_dict

from framework.errors import ConfigError, ModelError
from framework.run import Run

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sources


@dataclass
class TunedSource:
    """Where the tuned model comes from: ``memory``, ``artifact``, ``adapter`` or ``model``."""

    kind: str
    path: Path | None = None
    method: str | None = None

    def describe(self) -> str:
        if self.kind == "memory":
            return "the model trained in this run"
        return f"{self.kind} {self.path}"


def _user_path(value: Any, key: str) -> Path:
    from framework.data.prepare import original_cwd

    p = Path(str(value)).expanduser()
    if not p.is_absolute():
        p = original_cwd() / p
    if not p.exists():
        raise ConfigError(f"'{value}' does not exist.", where=f"{key}={value}")
    return p


def apply_run_source(run: Run) -> Path | None:
    """For ``evaluator.run=<dir>``: take that run's model and method config; return the dir.

    The finished run's ``config.yaml`` says which base model and method it trained; its
    ``model`` and ``method`` groups replace the ones on the command line, so the base model
    is the one it started from.
    """
    value = run.cfg.evaluator.get("run")
    if not value:
        return None
    src = _user_path(value, "evaluator.run")
    cfg_file, artifact = src / "config.yaml", src / "artifact"
    if not artifact.is_dir() or not cfg_file.is_file():
        raise ConfigError(
            f"'{src}' is not a finished tunesmith run: it needs config.yaml and artifact/.",
            where=f"evaluator.run={value}",
            hint="point it at a run directory whose train stage finished "
            "(outputs/runs/<name>), or use evaluator.adapter / evaluator.model_path.",
        )
    saved = OmegaConf.load(cfg_file)
    with open_dict(run.cfg):
        for group in ("model", "method"):
            if group in saved:
                run.cfg[group] = saved[group]
    if src.resolve() != run.dir.resolve():  # record what is really evaluated
        (run.dir / "config.yaml").write_text(run.resolved_config(), encoding="utf-8")
    log.info(
        "evaluating run %s (model=%s, method=%s)", src, run.cfg.model.name, run.cfg.method.name
    )
    return src


def resolve_tuned(run: Run, run_src: Path | None) -> TunedSource | None:
    """Which tuned model to score, from the evaluator keys and what this run holds."""
    ev = run.cfg.evaluator
    given = [k for k in ("adapter", "model_path", "run") if ev.get(k)]
    if len(given) > 1:
        raise ConfigError(
            f"Give one tuned model to evaluate, not {len(given)}: {', '.join(given)}.",
            where=", ".join(f"evaluator.{k}" for k in given),
            hint="keep one of them.",
        )
    if ev.get("adapter"):
        path = _user_path(ev.adapter, "evaluator.adapter")
        if not (path / "adapter_config.json").is_file():
            raise ModelError(
                f"'{path}' is not an adapter folder: it has no adapter_config.json.",
                where=f"evaluator.adapter={ev.adapter}",
                hint="point it at the folder a PEFT save_pretrained() wrote (a run's "
                "artifact/ or export/adapter/); for a whole model use evaluator.model_path.",
            )
        return TunedSource("adapter", path)
    if ev.get("model_path"):
        from framework.model.loading import check_model_dir

        return TunedSource(
            "model", check_model_dir(_user_path(ev.model_path, "evaluator.model_path"))
        )
    if run_src is not None:
        return TunedSource("artifact", run_src / "artifact", str(run.cfg.method.name))
    if run.trained and run.model is not None:
        return TunedSource("memory", run.artifact_dir, str(run.cfg.method.name))
    if run.artifact_dir.exists():
        return TunedSource("artifact", run.artifact_dir, str(run.cfg.method.name))
    return None


def load_tuned(run: Run, source: TunedSource) -> tuple[Any, Any]:
    """Load the tuned model of ``source`` (the configured model is its base)."""
    if source.kind == "memory":
        return run.model, run.tokenizer
    if source.kind == "model":
        from framework.model.loading import load_pretrained

        return load_pretrained(source.path, run.cfg)
    base, tokenizer = run.build_base()
    if source.kind == "adapter":
        from peft import PeftModel

        try:
            return PeftModel.from_pretrained(base, source.path), tokenizer
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(
                f"The adapter in '{source.path}' does not fit the model '{run.cfg.model.name}': "
                f"{exc}",
                where=f"evaluator.adapter={source.path}",
                hint="pick the base model the adapter was trained on (model=... / model.path=...).",
            ) from exc
    run.plugins.require("method", str(source.method))
    model = run.hook.tunesmith_load_method(
        name=str(source.method), base_model=base, path=source.path, cfg=run.cfg
    )
    if model is None:
        raise ModelError(
            f"The method '{source.method}' could not load '{source.path}'.",
            where="method.name",
        )
    return model, tokenizer


def is_adapter_model(model: Any) -> bool:
    """Whether ``model`` is a PEFT model whose adapter can be switched off."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def base_mode(run: Run, tuned: Any) -> str:
    """How the base side is obtained: ``disable_adapter`` or ``rebuild`` (``evaluator.base``)."""
    mode = str(run.cfg.evaluator.get("base", "auto"))
    if mode not in ("auto", "disable_adapter", "rebuild"):
        raise ConfigError(
            f"Unknown evaluator.base '{mode}'.",
            where="evaluator.base",
            hint="auto | disable_adapter | rebuild",
        )
    if mode == "auto":
        return "disable_adapter" if tuned is not None and is_adapter_model(tuned) else "rebuild"
    if mode == "disable_adapter" and (tuned is None or not is_adapter_model(tuned)):
        raise ConfigError(
            "evaluator.base=disable_adapter needs a tuned adapter model.",
            where="evaluator.base",
            hint="use evaluator.base=rebuild (or auto) for a full fine-tune.",
        )
    return mode


#: How each base mode reads in the report.
BASE_MODES = {
    "disable_adapter": "the tuned model with its adapter disabled",
    "rebuild": "a fresh build of `{model}`",
}


@contextmanager
def base_model(run: Run, tuned: Any, tokenizer: Any, mode: str) -> Iterator[tuple[Any, Any]]:
    """The base model for as long as the block runs.

    ``disable_adapter`` yields the tuned model with its adapter switched off (no second
    model in memory); ``rebuild`` builds a fresh base model and frees it afterwards.
    """
    if mode == "disable_adapter":
        with tuned.disable_adapter():
            yield tuned, tokenizer
        return
    model, tok = run.build_base()
    try:
        yield model, tok
    finally:
        del model


# --------------------------------------------------------------------------- fingerprints


def _dir_fingerprint(path: Path | None) -> str:
    if path is None or not Path(path).exists():
        return "none"
    h = hashlib.sha256(str(Path(path).resolve()).encode())
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


GENERATION_KEYS = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
)


def fingerprints(run: Run, source: TunedSource | None) -> dict[str, str]:
    """A hash per side of what decides its answers: model config, source and generation keys."""
    ev = run.cfg.evaluator
    gen = {k: OmegaConf.to_container(ev, resolve=True).get(k) for k in GENERATION_KEYS}
    if not gen["do_sample"]:
        gen = {k: v for k, v in gen.items() if k not in ("temperature", "top_p", "top_k", "seed")}
    model = OmegaConf.to_container(run.cfg.model, resolve=True)
    base = json.dumps({"model": model, "gen": gen}, sort_keys=True, default=str)
    out = {"base": hashlib.sha256(base.encode()).hexdigest()[:16]}
    if source is not None:
        tuned = base + source.kind + _dir_fingerprint(source.path)
        out["tuned"] = hashlib.sha256(tuned.encode()).hexdigest()[:16]
    return out

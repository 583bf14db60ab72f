"""One run: its config, its directory, its plugin manager and what its stages share."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.errors import TunesmithError
from framework.manager import TunesmithPluginManager

log = logging.getLogger(__name__)

STATE_FILE = "run_state.json"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it over ``path``.

    Works for files and directories, so a kill during a save never leaves a file that
    looks whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
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


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


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
        path = self.dir / STATE_FILE
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        return {"stages_done": [], "status": "new"}

    def mark(self, stage: str | None = None, status: str | None = None) -> None:
        state = self.state()
        if stage and stage not in state["stages_done"]:
            state["stages_done"].append(stage)
        if status:
            state["status"] = status
        write_json(self.dir / STATE_FILE, state)

    # ----------------------------------------------------------------- model
    def build_base(self, method_load: bool = True) -> tuple[Any, Any]:
        """Build a fresh base model and tokenizer through the ``tunesmith_build_model`` hook.

        Args:
            method_load: load the base the way the run's method asks
                (``tunesmith_model_load_kwargs``: e.g. 4-bit for ``method=qlora``); ``False``
                loads it plainly (e.g. to merge an adapter into full-precision weights).
        """
        from framework.models import method_load_kwargs

        name = str(self.cfg.model.name)
        self.plugins.require("model", name)
        load_kwargs = None
        if method_load:
            load_kwargs = self.hook.tunesmith_model_load_kwargs(
                name=str(self.cfg.method.name), cfg=self.cfg
            )
        with method_load_kwargs(load_kwargs):
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

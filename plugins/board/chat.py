"""Chat with a run's tuned model, its base model answering beside it.

Both sides are :class:`framework.serve.engine.ChatEngine`\\ s: the tuned one is loaded the way
``stages=[chat]`` loads a run (:func:`framework.serve.engine.load_chat_model`), the base one
is built from the run's saved config. The last run's pair is kept loaded; opening another
run's chat replaces it (one pair in memory at a time).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from framework.run import Run

SIDES = ("tuned", "base")


class ChatModels:
    """The loaded engines of one run at a time."""

    def __init__(self, cfg: DictConfig, plugins: Any) -> None:
        self.cfg = cfg
        self.plugins = plugins
        self.lock = threading.Lock()
        self.run_dir: Path | None = None
        self.engines: dict[str, Any] = {}

    def engine(self, run_dir: Path, side: str) -> Any:
        """The engine answering for ``side`` (``tuned`` or ``base``) of ``run_dir``."""
        with self.lock:
            if self.run_dir != run_dir:
                self.engines, self.run_dir = {}, run_dir
            if side not in self.engines:
                self.engines[side] = self._load(run_dir, side)
            return self.engines[side]

    def _load(self, run_dir: Path, side: str) -> Any:
        from framework.data.chat import ensure_chat_template
        from framework.model.generation import GenerationParams
        from framework.serve.engine import (
            ChatEngine,
            load_chat_model,
            run_for,
            saved_config,
            serve_config,
        )

        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=False))
        with open_dict(cfg):
            if cfg.get("serve") is None:
                cfg.serve = {}
            cfg.serve.model = str(run_dir)
        run = Run(cfg=cfg, dir=run_dir, plugins=self.plugins)
        params = GenerationParams.from_serve(serve_config(run))
        if side == "tuned":
            model, tokenizer, model_id = load_chat_model(run)
            return ChatEngine(model, tokenizer, model_id, params)
        source = run_for(saved_config(run_dir / "config.yaml"), run_dir, run)
        model, tokenizer = source.build_base()
        ensure_chat_template(tokenizer)
        model.eval()
        return ChatEngine(model, tokenizer, "base", params)

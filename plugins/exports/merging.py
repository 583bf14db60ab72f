"""Folding a trained adapter into a full-precision base model (used by ``export.formats=[merged]``).

:func:`merged_model` rebuilds the base model through ``run.build_base()`` from
:func:`full_precision_config` (never quantized, also for QLoRA runs), loads the method's saved
adapter on it with ``tunesmith_load_method`` and merges it (``merge_and_unload``). When the
run saved a whole model (no ``adapter_config.json``: full or partial fine-tuning), that model
is the tuned model as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from framework.errors import ModelError
from framework.model.loading import DTYPES, is_adapter_folder
from framework.run import Run
from framework.serve.engine import is_quantized

#: Config keys (under ``method`` or ``model``) with which a method asks for a quantized base
#: model. The merge turns them off to rebuild the base in full precision (QLoRA).
QUANTIZATION_KEYS = ("quantization", "quantization_config", "load_in_4bit", "load_in_8bit")

#: ``model.dtype`` values kept for the merge (any other, ``auto`` included, becomes float32).
FLOAT_DTYPES = frozenset(k for k, v in DTYPES.items() if v != "auto")


def full_precision_config(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` that builds the base model without quantization.

    A method such as QLoRA trains its adapter on a 4-bit base; merging into those weights would
    bake the quantization error into the export. The merge therefore rebuilds the base with
    every key of :data:`QUANTIZATION_KEYS` under ``method`` and ``model`` switched off
    (``null`` for a mapping, ``false`` for a flag), and a ``model.dtype`` of ``auto`` or a
    quantized type replaced by ``float32``.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        for group in ("method", "model"):
            node = cfg.get(group)
            if node is None:
                continue
            for key in QUANTIZATION_KEYS:
                if key in node:
                    node[key] = False if isinstance(node[key], bool) else None
        if str(cfg.model.get("dtype", "float32")).lower() not in FLOAT_DTYPES:
            cfg.model.dtype = "float32"
    return cfg


def merged_model(run: Run) -> tuple[Any, Any]:
    """The tuned model as one plain ``transformers`` model, and the tokenizer it trained with.

    Raises:
        TunesmithError: the run has no trained model.
        ModelError: the base model still comes out quantized, or the adapter cannot be merged.
    """
    if not run.artifact_dir.exists():
        run.load_tuned()  # raises the clear "no trained model" error
    tokenizer = training_tokenizer(run)
    if not is_adapter_folder(run.artifact_dir):
        model, tok = run.load_tuned()
        return model, tokenizer or tok
    base_cfg = full_precision_config(run.cfg)
    base_run = dataclasses.replace(
        run, cfg=base_cfg, model=None, tokenizer=None, trained=False, metrics={}
    )
    base, base_tok = base_run.build_base(method_load=False)
    if is_quantized(base):
        raise ModelError(
            f"The base model for the merge came out quantized although "
            f"{', '.join(QUANTIZATION_KEYS)} were switched off.",
            where=f"method={run.cfg.method.name}",
            hint="the method must ask for quantization through one of those keys; or export "
            "the adapter alone (export.formats=[adapter]).",
        )
    name = str(run.cfg.method.name)
    run.plugins.require("method", name)
    tuned = run.hook.tunesmith_load_method(
        name=name, base_model=base, path=run.artifact_dir, cfg=base_cfg
    )
    if not hasattr(tuned, "merge_and_unload"):
        raise ModelError(
            f"The adapter of method '{name}' cannot be merged into the base model.",
            where=str(run.artifact_dir),
            hint="export it with export.formats=[adapter].",
        )
    try:
        merged = tuned.merge_and_unload()
    except (ValueError, NotImplementedError, AttributeError) as exc:
        raise ModelError(
            f"The adapter of method '{name}' cannot be merged: {exc}",
            where=str(run.artifact_dir),
            hint="export it with export.formats=[adapter].",
        ) from exc
    return merged, tokenizer or base_tok


def training_tokenizer(run: Run) -> Any | None:
    """The tokenizer the train stage saved with the artifact (its chat template included)."""
    if not (run.artifact_dir / "tokenizer_config.json").is_file():
        return run.tokenizer
    from transformers import AutoTokenizer

    from framework.data.chat import ensure_chat_template

    return ensure_chat_template(AutoTokenizer.from_pretrained(run.artifact_dir))

"""The export stage: write the tuned model where other tools can load it.

Every format of ``export.formats`` is written by the ``tunesmith_export`` plugin that serves
it, into ``export/<format>/`` of the run directory (atomically: a killed export never leaves a
folder that looks whole). Next to what the plugin wrote, the stage adds a model card
(``README.md``, see :func:`model_card`) and the run's resolved config (``tunesmith_config.yaml``).

The building blocks for the in-tree formats live here:

* :func:`merged_model` folds the trained adapter into a freshly built, full-precision base
  model (also for QLoRA runs, see :func:`full_precision_config`);
* :func:`save_hf_folder` writes a standard Hugging Face model folder (safetensors, config,
  generation config, tokenizer with its chat template) that ``transformers`` loads alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from framework.errors import ConfigError, ModelError
from framework.model.loading import DTYPES
from framework.run import Run, atomic_path
from framework.serve.engine import EXPORT_CONFIG, end_of_turn_ids, is_quantized

log = logging.getLogger(__name__)

#: Config keys (under ``method`` or ``model``) with which a method asks for a quantized base
#: model. The merge turns them off to rebuild the base in full precision (QLoRA).
QUANTIZATION_KEYS = ("quantization", "quantization_config", "load_in_4bit", "load_in_8bit")

SPLITS = ("train", "val", "test")


def export(run: Run) -> list[Path]:
    """Run every export format listed in ``export.formats``; return the directories written.

    Raises:
        ConfigError: a format nobody serves, or a wrong ``export.dtype`` (before any work).
    """
    formats = [str(f) for f in run.cfg.export.formats]
    for fmt in formats:
        run.plugins.require("export", fmt)
    export_dtype(run.cfg)  # fail before any work
    written = []
    for fmt in formats:
        target = run.dir / "export" / fmt
        with atomic_path(target) as tmp:
            tmp.mkdir()
            run.hook.tunesmith_export(name=fmt, run=run, path=tmp)
            (tmp / EXPORT_CONFIG).write_text(run.resolved_config(), encoding="utf-8")
            if run.cfg.export.get("model_card", True):
                (tmp / "README.md").write_text(model_card(run, fmt, tmp), encoding="utf-8")
        log.info("exported %s -> %s", fmt, target)
        written.append(target)
    return written


# --------------------------------------------------------------------------- merged model


def export_dtype(cfg: DictConfig) -> Any:
    """The ``torch.dtype`` of ``export.dtype``, or ``None`` to keep the model's own."""
    name = cfg.export.get("dtype")
    if name in (None, "", "auto"):
        return None
    key = DTYPES.get(str(name).lower())  # model.dtype's names; auto is handled above
    if key is None:
        raise ConfigError(
            f"Unknown export dtype '{name}'.",
            where="export.dtype",
            hint="one of null (keep the model's), float32, bfloat16, float16.",
        )
    import torch

    return getattr(torch, key)


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
        if str(cfg.model.get("dtype", "float32")).lower() not in {
            "float32",
            "fp32",
            "bfloat16",
            "bf16",
            "float16",
            "fp16",
        }:
            cfg.model.dtype = "float32"
    return cfg


def has_adapter(path: Path) -> bool:
    """Whether ``path`` holds a PEFT adapter (rather than a whole model)."""
    return (Path(path) / "adapter_config.json").is_file()


def merged_model(run: Run) -> tuple[Any, Any]:
    """The tuned model as one plain ``transformers`` model, and the tokenizer it trained with.

    For an adapter method the base model is rebuilt through ``run.build_base()`` from
    :func:`full_precision_config` (never quantized), the method's saved adapter is loaded on
    it with ``tunesmith_load_method`` and merged (``merge_and_unload``). For ``method=full``
    the saved model is the tuned model.

    Raises:
        ModelError: the base model still comes out quantized, or the adapter cannot be merged.
    """
    if not run.artifact_dir.exists():
        run.load_tuned()  # raises the clear "no trained model" error
    tokenizer = _training_tokenizer(run)
    if not has_adapter(run.artifact_dir):
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


def _training_tokenizer(run: Run) -> Any | None:
    """The tokenizer the train stage saved with the artifact (its chat template included)."""
    if not (run.artifact_dir / "tokenizer_config.json").is_file():
        return run.tokenizer
    from transformers import AutoTokenizer

    from framework.data.chat import ensure_chat_template

    return ensure_chat_template(AutoTokenizer.from_pretrained(run.artifact_dir))


def save_hf_folder(
    model: Any,
    tokenizer: Any,
    path: Path,
    dtype: Any = None,
    generation: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a standard Hugging Face model folder.

    The folder holds ``model.safetensors`` (sharded for big models), ``config.json``,
    ``generation_config.json`` (ending an answer at the chat template's end-of-turn token as
    well as at eos), and the tokenizer files with the chat template.

    Args:
        model: a plain ``transformers`` model (no adapter wrapper, not quantized).
        tokenizer: its tokenizer.
        path: the folder to write into.
        dtype: cast the weights to this ``torch.dtype`` first (``None`` keeps them).
        generation: ``generation_config.json`` fields to set (``export.generation``; ``None``
            values are left as they are).
    """
    from transformers import GenerationConfig

    if dtype is not None:
        model = model.to(dtype)
    gen = getattr(model, "generation_config", None)
    gen = GenerationConfig.from_dict(gen.to_dict()) if gen is not None else GenerationConfig()
    eos = end_of_turn_ids(tokenizer, model)
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    gen.pad_token_id = tokenizer.pad_token_id
    gen._from_model_config = False  # written on purpose: transformers must not regenerate it
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    chosen = {k: v for k, v in (generation or {}).items() if v is not None}
    for key, value in chosen.items():
        setattr(gen, key, value)
    try:
        gen.validate(strict=bool(chosen))
    except ValueError as exc:
        raise ConfigError(
            f"The generation settings are inconsistent: {exc}",
            where="export.generation",
            hint="e.g. temperature/top_p need do_sample: true.",
        ) from exc
    model.generation_config = gen
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)


def copy_artifact(run: Run, path: Path) -> Path:
    """Copy what the train stage saved (the adapter, or the whole model) into ``path``."""
    if not run.artifact_dir.exists():
        run.load_tuned()  # raises the clear "no trained model" error
    shutil.copytree(run.artifact_dir, path, dirs_exist_ok=True)
    return path


# --------------------------------------------------------------------------- model card


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return "—" if value is None else str(value)


def _split_size(entry: Any) -> int:
    """A split's example count from ``report.json`` (a dict with ``examples``, or a count)."""
    return int(entry.get("examples", 0)) if isinstance(entry, dict) else int(entry or 0)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def evaluation_table(metrics: dict[str, Any]) -> str:
    """``metric | base | tuned | change`` in Markdown, from ``metrics.json``'s content."""
    tuned = metrics.get("tuned") or {}
    base = metrics.get("base") or {}
    rows = []
    for name in list(dict.fromkeys([*tuned, *base])):
        t, b = tuned.get(name), base.get(name)
        change = (
            f"{t - b:+.4g}" if isinstance(t, int | float) and isinstance(b, int | float) else ""
        )
        rows.append([name, b, t, change])
    return _table(["metric", "base", "tuned", "change"], rows)


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The settings that shaped the training, flat and in reading order."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    out: dict[str, Any] = {}
    for key, value in (plain.get("method") or {}).items():
        if key != "name":
            out[f"method.{key}"] = value
    optim = plain.get("optim") or {}
    for key in ("name", "lr", "weight_decay", "scheduler", "warmup_ratio", "warmup_steps"):
        if key in optim:
            out[f"optim.{key}"] = optim[key]
    trainer = plain.get("trainer") or {}
    for key in ("max_epochs", "max_steps", "accumulate_grad_batches", "precision"):
        if key in trainer:
            out[f"trainer.{key}"] = trainer[key]
    data = plain.get("data") or {}
    for key in ("batch_size", "max_length", "train_on_prompt"):
        if key in data:
            out[f"data.{key}"] = data[key]
    objective = plain.get("objective")
    if isinstance(objective, dict):  # objective=<name> plus its options
        out["objective"] = objective.get("name")
        out.update({f"objective.{k}": v for k, v in objective.items() if k != "name"})
    else:
        out["objective"] = objective
    out["seed"] = plain.get("seed")
    return out


def model_card(run: Run, fmt: str, folder: Path) -> str:
    """The ``README.md`` of an export, written from the run's config, data report and metrics.

    It names the base model, the method, the data set and its fingerprint (the hash of the
    data files and data settings from ``data/report.json``), the key hyperparameters and the
    evaluation table of ``metrics.json``, and shows how to load the folder.
    """
    cfg = run.cfg
    model_cfg, method = cfg.model, str(cfg.method.name)
    base_name = str(model_cfg.get("hub_id") or model_cfg.name)
    adapter = has_adapter(folder)
    report = _read_json(run.data_dir / "report.json")
    metrics = _read_json(run.dir / "metrics.json")
    train = _read_json(run.dir / "train_summary.json")
    dtype = cfg.export.get("dtype") if fmt == "merged" else None

    front = ["---", f"library_name: {'peft' if adapter else 'transformers'}"]
    if model_cfg.get("hub_id"):
        front.append(f"base_model: {model_cfg.hub_id}")
    front += ["pipeline_tag: text-generation", "tags:", "- tunesmith", f"- {method}", "---", ""]

    what = {
        "adapter": "the adapter as trained (load it on top of the base model with PEFT)",
        "merged": "the adapter merged into the base model: a standalone Hugging Face model",
    }.get(fmt, f"export format `{fmt}`")
    if fmt == "adapter" and not adapter:
        what = f"the whole fine-tuned model (method `{method}` trains every weight)"
    lines = [
        f"# {cfg.get('run_name') or run.dir.name}",
        "",
        f"Fine-tuned with tunesmith from `{base_name}` using `{method}`. This folder is {what}.",
        "",
        "## Base model",
        "",
        _table(
            ["", ""],
            [
                ["model", base_name],
                ["config name", f"model={model_cfg.name}"],
                *([["path", model_cfg.path]] if model_cfg.get("path") else []),
                ["exported dtype", dtype or "as trained"],
            ],
        ),
        "",
        "## Method",
        "",
        f"`{method}`"
        + (
            f": {train.get('trainable'):,} of {train.get('total'):,} parameters trained."
            if train.get("trainable") and train.get("total")
            else "."
        ),
        "",
        "## Data",
        "",
    ]
    if report:
        splits = report.get("splits") or {}
        rejected = sum((report.get("rejected") or {}).values())
        lines.append(
            _table(
                ["", ""],
                [
                    ["data set", f"{cfg.data.get('name')} (format `{cfg.data.get('format')}`)"],
                    [
                        "files",
                        ", ".join(f for src in report.get("sources", []) for f in src["files"]),
                    ],
                    ["fingerprint (data files + data settings)", report.get("fingerprint")],
                    ["examples loaded", report.get("loaded")],
                    ["rejected", rejected],
                    ["removed in cleaning", sum((report.get("cleaning") or {}).values())],
                    [
                        "train / val / test",
                        " / ".join(str(_split_size(splits.get(s))) for s in SPLITS),
                    ],
                ],
            )
        )
    else:
        lines.append(f"Data set `{cfg.data.get('name')}`; no data report was found in this run.")
    lines += [
        "",
        "## Training hyperparameters",
        "",
        _table(["setting", "value"], [[k, v] for k, v in hyperparameters(cfg).items()]),
        "",
        "## Evaluation",
        "",
    ]
    if metrics.get("tuned") or metrics.get("base"):
        limit = cfg.evaluator.get("max_samples")
        lines += [
            f"On the held-out test split{f' (first {limit} examples)' if limit else ''}, "
            "base model against the tuned one:",
            "",
            evaluation_table(metrics),
        ]
    else:
        lines.append("This run was not evaluated (no metrics.json).")
    lines += ["", "## Use", "", _usage(fmt, adapter, base_name), ""]
    lines += [
        "The prompt format is the tokenizer's chat template (the one used in training); "
        "`generation_config.json` stops at its end-of-turn token.",
        "",
        f"`{EXPORT_CONFIG}` is the complete resolved tunesmith config of the run.",
        "",
    ]
    return "\n".join(front + lines)


def _usage(fmt: str, adapter: bool, base_name: str) -> str:
    if adapter:
        body = (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
            f"# adapter_config.json names the base model folder; point it at {base_name}\n"
            "# if this folder moved to another machine."
        )
    else:
        body = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
            'messages = [{"role": "user", "content": "Hello!"}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,\n"
            '                                       return_tensors="pt", return_dict=True)\n'
            "out = model.generate(**inputs, max_new_tokens=64)\n"
            'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], '
            "skip_special_tokens=True))"
        )
    return f"```python\n{body}\n```"

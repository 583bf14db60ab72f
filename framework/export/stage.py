"""The export stage: write the tuned model where other tools can load it.

Every format of ``export.formats`` is written by the ``tunesmith_export`` plugin that serves
it, into ``export/<format>/`` of the run directory (atomically: a killed export never leaves a
folder that looks whole). Next to what the plugin wrote, the stage adds a model card
(``README.md``, see :func:`model_card`) and the run's resolved config (``tunesmith_config.yaml``).

What every format shares lives here: :func:`export_dtype` reads ``export.dtype`` (checked
before any format is written), :func:`save_hf_folder` writes a standard Hugging Face model
folder (safetensors, config, generation config, tokenizer with its chat template) that
``transformers`` loads alone, and :func:`copy_artifact` copies what the train stage saved.
What a format is, the stage reads from its :class:`framework.descriptors.ExportFormat`
(``writes``, shown in the model card); the formats themselves live in ``plugins/exports/``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.descriptors import ExportFormat, Method
from framework.errors import ConfigError
from framework.model.generation import end_of_turn_ids
from framework.model.loading import DTYPES, is_adapter_folder
from framework.run import Run, atomic_path
from framework.serve.engine import EXPORT_CONFIG

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- shared


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
    eos = end_of_turn_ids(model, tokenizer)
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
    adapter = is_adapter_folder(folder)
    report = _read_json(run.data_dir / "report.json")
    metrics = _read_json(run.dir / "metrics.json")
    train = _read_json(run.dir / "train_summary.json")
    written = _read_json(folder / "config.json")  # a whole model's folder says its dtype
    dtype = written.get("dtype") or written.get("torch_dtype")

    front = ["---", f"library_name: {'peft' if adapter else 'transformers'}"]
    if model_cfg.get("hub_id"):
        front.append(f"base_model: {model_cfg.hub_id}")
    front += ["pipeline_tag: text-generation", "tags:", "- tunesmith", f"- {method}", "---", ""]

    fmt_info = run.plugins.describe("export", fmt)
    writes = fmt_info.writes if isinstance(fmt_info, ExportFormat) and fmt_info.writes else ""
    holds = (
        "a PEFT adapter: load it on top of the base model with PEFT"
        if adapter
        else "a whole model that `transformers` loads alone"
    )
    lines = [
        f"# {cfg.get('run_name') or run.dir.name}",
        "",
        f"Fine-tuned with tunesmith from `{base_name}` using `{method}`. Export format "
        f"`{fmt}`" + (f": {writes}" if writes else "") + f". This folder holds {holds}.",
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
        " ".join(
            [
                _method_text(method, run.plugins.describe("method", method)),
                *(
                    [f"{train['trainable']:,} of {train['total']:,} parameters trained."]
                    if train.get("trainable") and train.get("total")
                    else []
                ),
            ]
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
    lines += ["", "## Use", "", _usage(adapter, base_name), ""]
    lines += [
        "The prompt format is the tokenizer's chat template (the one used in training); "
        "`generation_config.json` stops at its end-of-turn token.",
        "",
        f"`{EXPORT_CONFIG}` is the complete resolved tunesmith config of the run.",
        "",
    ]
    return "\n".join(front + lines)


#: How the model card says what each kind of method (``Method.kind``) trained.
KIND_TEXT = {
    "adapter": "An adapter method: the base model's weights stay frozen",
    "full": "Full fine-tuning: every weight of the base model trains",
    "partial": "Partial fine-tuning: some of the base model's own weights train",
}


def _method_text(name: str, info: Any) -> str:
    """What the method is and what it trains, from its descriptor (just its name without)."""
    if not isinstance(info, Method):
        return f"`{name}`."
    text = f"`{name}`" + (f": {info.description}." if info.description else ".")
    kind = KIND_TEXT.get(info.kind, "")
    if kind and info.base_bits:
        kind += f", held in {info.base_bits}-bit while it trains"
    return f"{text} {kind}." if kind else text


def _usage(adapter: bool, base_name: str) -> str:
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

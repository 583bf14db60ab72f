"""Every hook a tunesmith plugin can implement, grouped by the stage that calls it.

Two kinds of hook:

* **single-owner** hooks (``firstresult=True``) receive the *name* the user picked in config
  (``method=lora`` -> ``name="lora"``). A plugin returns ``None`` for names it does not serve;
  the first non-``None`` result wins and the rest are not called.
* **fan-out** hooks collect the result of every registered plugin (a list, ``None`` dropped).

A plugin announces the names it serves with :func:`tunesmith_provides`; that is how
tunesmith lists the choices for each stage and rejects a misspelled name before any work.
Every hook here is documented in ``docs/plugins.md`` (a test checks this).

Plugins import only the marker: ``from framework import hookimpl``; an implementation may
take any subset of a hook's arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framework import hookspec

if TYPE_CHECKING:  # imported for annotations only: keeps start-up fast
    import torch
    from lightning.pytorch import Callback
    from omegaconf import DictConfig

    from framework.evaluate.context import EvalContext
    from framework.run import Run

# --------------------------------------------------------------------------- discovery


@hookspec
def tunesmith_provides() -> Mapping[str, Iterable[str]]:
    """Declare the names this plugin serves, per stage.

    Called once when the plugin manager is built, and by ``python run.py plugins``.

    Returns:
        A mapping from a stage key to the names served for it, e.g.
        ``{"method": ["lora"], "metric": ["exact_match"]}``. Stage keys in use:
        ``stage``, ``file``, ``format``, ``objective``, ``model``, ``method``, ``metric``,
        ``export``, and ``session``: the stages (also listed under ``stage``) that use a run
        without changing it (``chat``, ``serve``): they are not recorded in the run state and
        run again every time. Fan-out: every plugin's mapping is merged.
    """


# --------------------------------------------------------------------------- pipeline


@hookspec(firstresult=True)
def tunesmith_run_stage(name: str, run: Run) -> bool | None:
    """Run the pipeline stage ``name`` (``prepare``, ``train``, ``evaluate``, ``export``...).

    Called once per entry of ``cfg.stages``, in order.

    Args:
        name: the stage the user listed in ``stages=[...]``.
        run: the current run (config, run directory, plugin manager, shared state).

    Returns:
        ``True`` when this plugin ran the stage, ``None`` when it does not serve ``name``.
        First result wins.
    """


# --------------------------------------------------------------------------- prepare


@hookspec(firstresult=True)
def tunesmith_read_file(path: Path, data_cfg: DictConfig) -> Iterable[tuple[int, Any]] | None:
    """Read the raw records of one data file.

    Called by the prepare stage for every file that ``data.path`` (or a ``data.sources``
    entry, ``data.val_path``, ``data.test_path``) names; the reader is picked by suffix.

    Args:
        path: the file to read.
        data_cfg: the ``data`` config group.

    Returns:
        An iterable of ``(line_number, record)`` pairs, where ``record`` is usually a dict;
        a record that cannot be decoded is yielded as a :class:`framework.errors.RecordError`
        instance so it is rejected with its line. ``None`` when the plugin does not read
        this kind of file. First result wins.
    """


@hookspec(firstresult=True)
def tunesmith_parse_record(name: str, record: Any, data_cfg: DictConfig) -> dict | None:
    """Turn one raw record of the record shape ``name`` into a tunesmith example.

    Called by the prepare stage for each raw record; ``name`` is ``data.format`` (or the
    ``format`` of the record's ``data.sources`` entry).

    Args:
        name: the record shape (``alpaca``...).
        record: the raw record as read from the file.
        data_cfg: the ``data`` config group (column mapping and options).

    Returns:
        An example dict: ``{"messages": [{"role": ..., "content": ...}, ...]}`` for chat
        data, ``{"text": ...}`` for plain text, or for a preference pair the chat shape
        ending with the chosen answer plus ``"rejected": str``. Raise
        :class:`framework.errors.RecordError` for a record that is wrong (it is rejected
        with the reason). ``None`` when the plugin does not serve ``name``. First result wins.
    """


@hookspec(firstresult=True)
def tunesmith_encode_example(
    name: str, example: dict, tokenizer: Any, cfg: DictConfig
) -> dict | None:
    """Tokenize one example for the training objective ``name``.

    Called by the data module once per example before training (results are cached).

    Args:
        name: the training objective (``cfg.objective``: ``sft``, ``pretrain``...).
        example: an example as returned by :func:`tunesmith_parse_record`.
        tokenizer: the model's tokenizer.
        cfg: the whole run config.

    Returns:
        ``{"input_ids": list[int], "labels": list[int]}`` with ``-100`` where no loss is
        taken. ``None`` when the plugin does not serve ``name``. First result wins.
    """


# --------------------------------------------------------------------------- model


@hookspec(firstresult=True)
def tunesmith_build_model(name: str, cfg: DictConfig) -> tuple[Any, Any] | None:
    """Build the base model and its tokenizer for ``model=<name>``.

    Called when a stage first needs the model, and again for a fresh base model when
    evaluation compares base and tuned.

    Args:
        name: ``cfg.model.name``.
        cfg: the whole run config (the method may ask for a quantized load).

    Returns:
        ``(model, tokenizer)``: a ``transformers`` causal LM and its tokenizer (with a chat
        template). ``None`` when the plugin does not serve ``name``. First result wins.
    """


@hookspec(firstresult=True)
def tunesmith_model_load_kwargs(name: str, cfg: DictConfig) -> dict[str, Any] | None:
    """Extra ``from_pretrained`` arguments the fine-tuning method ``name`` needs.

    Called by :meth:`framework.run.Run.build_base` with ``name = cfg.method.name`` before it
    calls :func:`tunesmith_build_model`; the result is in force for every
    ``framework.model.loading.load_pretrained`` call the model plugin makes (so model plugins need
    not know about methods). ``method=qlora`` returns a 4-bit ``quantization_config``.

    Args:
        name: the method (``cfg.method.name``).
        cfg: the whole run config.

    Returns:
        A dict of keyword arguments for ``AutoModelForCausalLM.from_pretrained``
        (``quantization_config``, ``device_map``, ``attn_implementation``...), or ``None``
        when the method needs none or the plugin does not serve ``name``. First result wins.
    """


@hookspec(firstresult=True)
def tunesmith_apply_method(name: str, model: Any, cfg: DictConfig) -> Any | None:
    """Make ``model`` trainable with the fine-tuning method ``name`` (``method=<name>``).

    Called by the train stage after the base model is built.

    Returns:
        The model to train (often a wrapper such as a ``peft.PeftModel``), with exactly the
        parameters to train having ``requires_grad=True``. ``None`` when the plugin does not
        serve ``name``. First result wins.
    """


@hookspec(firstresult=True)
def tunesmith_save_method(
    name: str, model: Any, tokenizer: Any, path: Path, cfg: DictConfig
) -> Path | None:
    """Save what method ``name`` trained (an adapter, or the whole model) under ``path``.

    Called at the end of the train stage, with ``path`` a fresh directory.

    Returns:
        The directory written (an adapter folder or a model folder). First result wins.
    """


@hookspec(firstresult=True)
def tunesmith_load_method(name: str, base_model: Any, path: Path, cfg: DictConfig) -> Any | None:
    """Load what :func:`tunesmith_save_method` wrote, on top of a fresh ``base_model``.

    Called by the evaluate and export stages when the tuned model is not in memory.

    Returns:
        The tuned model, ready for inference. ``None`` when the plugin does not serve
        ``name``. First result wins.
    """


# --------------------------------------------------------------------------- train


@hookspec(firstresult=True)
def tunesmith_compute_loss(
    name: str, model: Any, batch: dict[str, torch.Tensor], cfg: DictConfig
) -> torch.Tensor | None:
    """Compute the training loss of one batch for the objective ``name``.

    Called by the Lightning module at every training and validation step.

    Args:
        name: ``cfg.objective``.
        model: the model being trained.
        batch: the collated batch: ``input_ids``, ``labels``, ``num_tokens`` and either
            ``attention_mask`` (padded) or ``position_ids`` (``data.packing``: several
            examples per row, no mask). Run the model with
            ``model(**framework.train.losses.model_inputs(batch))``, which keeps packed examples
            apart; ``model(**batch)`` would not.
        cfg: the whole run config.

    Returns:
        A scalar tensor. ``None`` when the plugin does not serve ``name``. First result wins.
    """


@hookspec
def tunesmith_configure_callbacks(cfg: DictConfig, run: Run) -> list[Callback] | None:
    """Add Lightning callbacks to the trainer.

    Called once when the train stage builds its ``lightning.Trainer``.

    Returns:
        A list of ``lightning.pytorch.Callback`` instances (or ``None``). Fan-out: every
        plugin's callbacks are used.
    """


# --------------------------------------------------------------------------- evaluate


@hookspec
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    """Compute the metrics this plugin serves among the selected ``metrics``.

    Called by the evaluate stage once for the base model and once for the tuned model.

    Args:
        metrics: the names selected in ``evaluator.metrics``.
        ctx: the model, tokenizer, test examples and cached generations / losses.

    Returns:
        ``{metric_name: value}`` for the selected names the plugin serves, or ``None``.
        A selected name may be answered with several keys that start with it (``rouge``
        -> ``rouge1``, ``rouge2``, ``rougeL``). Fan-out: the dicts of all plugins are merged.
    """


# --------------------------------------------------------------------------- export


@hookspec(firstresult=True)
def tunesmith_export(name: str, run: Run, path: Path) -> Path | None:
    """Write the tuned model in the export format ``name`` (``export.format``) under ``path``.

    Called by the export stage.

    Returns:
        The directory written. ``None`` when the plugin does not serve ``name``.
        First result wins.
    """


# --------------------------------------------------------------------------- lifecycle


@hookspec
def tunesmith_run_end(run: Run, metrics: dict[str, Any]) -> None:
    """Called once after the last stage of a run finished, with the run's metrics.

    Session stages (``chat``, ``serve``) do not count: a command that runs only those does
    not call this hook.

    Fan-out: every plugin is called; return values are ignored.
    """


# --------------------------------------------------------------------------- checks and reports


@hookspec
def tunesmith_check_config(cfg: DictConfig, plugins: Any) -> None:
    """Check the options a plugin reads before any stage runs (so before training).

    Called once by the pipeline after the plugin manager is built and the stage names are
    checked, before the first stage. Raise :class:`framework.errors.ConfigError` for a
    value that would fail later (a misspelled benchmark task name, a missing folder). Keep
    it cheap: load no model. Only check what the run will use (``cfg.stages``,
    ``cfg.evaluator.metrics``...).

    Args:
        cfg: the whole run config.
        plugins: the plugin manager (:class:`framework.manager.TunesmithPluginManager`).

    Fan-out: every plugin is called; return values are ignored.
    """


@hookspec
def tunesmith_report_sections(run: Run, results: dict[str, Any]) -> str | None:
    """Add a section to ``eval_report.md`` after the metrics table.

    Called by the evaluate stage once both sides are scored, before the report is written.

    Args:
        run: the current run (its config and directory).
        results: what is written to ``metrics.json`` (``{"base": {...}, "tuned": {...}}``).

    Returns:
        Markdown (start it with a ``## `` heading), or ``None``. Fan-out: every section is
        appended, in plugin order.
    """

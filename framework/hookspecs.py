"""Every hook a tunesmith plugin can implement, grouped by the stage that calls it.

Two kinds of hook:

* **single-owner** hooks (``firstresult=True``) receive the *name* the user picked in config
  (``method=lora`` -> ``name="lora"``). A plugin returns ``None`` for names it does not serve;
  the first non-``None`` result wins and the rest are not called.
* **fan-out** hooks collect the result of every registered plugin (a list, ``None`` dropped).

A plugin announces what it serves with :func:`tunesmith_provides` (descriptors from
:mod:`framework.descriptors`); that is how tunesmith lists the choices for each stage, reads
what it needs to know about each (never guessing from a name), and rejects a misspelled name
before any work.
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

    from framework.descriptors import Note, Provided
    from framework.evaluate.context import EvalContext
    from framework.run import Run
    from framework.train.objective import LossContext

# --------------------------------------------------------------------------- discovery


@hookspec
def tunesmith_provides() -> list[Provided] | Mapping[str, Iterable[str]]:
    """Declare what this plugin serves: one descriptor per name.

    Called once when the plugin manager is built, and by ``python run.py plugins``.

    Returns:
        A list of :mod:`framework.descriptors` instances -- ``Stage``, ``FileType``,
        ``DataFormat``, ``ModelSource``, ``Method``, ``Objective``, ``Metric``,
        ``ExportFormat`` -- each naming what users pick in config and declaring what the
        core needs to know (a metric's direction, a method's kind, an objective's options).
        The first contract's mapping ``{"method": ["lora"]}`` is still accepted (default
        descriptors). Fan-out: every plugin's descriptors are merged.
    """


# --------------------------------------------------------------------------- pipeline


@hookspec(firstresult=True)
def tunesmith_run_stage(name: str, run: Run) -> bool | None:
    """Run the pipeline stage ``name`` (the first contract's way to run a stage).

    Called for a stage of ``cfg.stages`` whose :class:`framework.Stage` descriptor has no
    ``run`` function (prefer ``Stage(name, run=...)``).

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

    Called by the prepare stage (lengths, spot check) and by the data module once per
    example before training (results are cached, see ``framework.data.token_cache``).

    Args:
        name: the training objective (``cfg.objective.name``: ``sft``, ``pretrain``...); its
            options are in ``cfg.objective``.
        example: an example as returned by :func:`tunesmith_parse_record`.
        tokenizer: the model's tokenizer.
        cfg: the whole run config.

    Returns:
        ``{"input_ids": list[int], "labels": list[int]}`` with ``-100`` where no loss is
        taken, plus the fields the objective declares in ``Objective.batch_fields`` (e.g.
        ``rejected_input_ids``: lists of ids are kept as int32 arrays like ``input_ids``, and
        cached with them). An example whose labels are all ``-100`` is left out of
        training. ``None`` when the plugin does not serve ``name``. First result wins.
    """


@hookspec(firstresult=True)
def tunesmith_collate(
    name: str, rows: list[dict], pad_token_id: int, cfg: DictConfig
) -> dict[str, Any] | None:
    """Batch the encoded examples ``rows`` for the objective ``name``.

    Called by the data loaders for every training and validation batch, before the default
    collator. An objective whose examples carry more than ``input_ids``/``labels`` (a
    preference pair: chosen and rejected) batches them here; ``framework.data.collate``
    has helpers (``pad_ids``, ``pad_labels``). Such an objective should declare
    ``packing=False`` (the default collator packs; this hook is on its own).

    Args:
        name: the training objective (``cfg.objective.name``).
        rows: the examples of the batch as :func:`tunesmith_encode_example` returned them
            (lists of ids as int32 arrays).
        pad_token_id: the tokenizer's padding id.
        cfg: the whole run config.

    Returns:
        The batch: a dict of tensors that must include ``num_tokens`` (the count of real,
        non-pad tokens, for throughput); it is what ``tunesmith_compute_loss`` receives.
        ``None``: the default collator (``input_ids``, ``labels``, ``attention_mask`` or
        ``position_ids``, ``num_tokens``). First result wins.
    """


@hookspec(firstresult=True)
def tunesmith_precompute(
    name: str,
    rows: list[dict],
    reference: Any,
    pad_token_id: int,
    cfg: DictConfig,
    options: DictConfig,
) -> list[dict[str, Any]] | None:
    """Compute values once per encoded example with the reference model, before training.

    Called by the train stage (once per run, before the first step; also before a resumed run
    restores its checkpoint) for the training and validation examples, when the objective
    ``name`` declares ``Objective.precomputed`` fields. What it returns is stored with the
    encoded data (in the run's ``data/precomputed/`` and in ``data.cache_dir/encoded``, keyed
    by the examples, the tokens' settings, the objective's options, the model and the
    method) and added to each row, so :func:`tunesmith_collate` batches it and the loss reads
    it instead of running a reference model (``objective.precompute_ref=true`` in ``dpo`` and
    ``kto``: no frozen copy under ``method=full``).

    Args:
        name: the training objective (``cfg.objective.name``).
        rows: the encoded examples of one split, in a fixed order.
        reference: the model as training starts (adapters switched off, eval mode, under
            ``torch.no_grad``): the same reference ``LossContext.reference()`` gives.
        pad_token_id: the tokenizer's padding id.
        cfg: the whole run config.
        options: the objective's options (as ``LossContext.options``).

    Returns:
        One dict per row, holding fields the objective declares in ``Objective.precomputed``
        (numbers, or lists of token ids); ``None`` when nothing is to be precomputed (the
        option is off, or the plugin does not serve ``name``). First result wins.
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
    name: str, model: Any, batch: dict[str, torch.Tensor], cfg: DictConfig, ctx: LossContext
) -> torch.Tensor | None:
    """Compute the training loss of one batch for the objective ``name``.

    Called by the Lightning module at every training and validation step.

    Args:
        name: ``cfg.objective.name``.
        model: the model being trained.
        batch: the collated batch. By default: ``input_ids``, ``labels``, ``num_tokens`` and
            either ``attention_mask`` (padded) or ``position_ids`` (``data.packing``: several
            examples per row, no mask). Run the model with
            ``model(**framework.train.losses.model_inputs(batch))``, which keeps packed
            examples apart; ``model(**batch)`` would not. An objective that batches its own
            examples (:func:`tunesmith_collate`) gets what its hook returned.
        cfg: the whole run config.
        ctx: a :class:`framework.train.objective.LossContext`: ``ctx.options`` (the
            objective's options), ``ctx.step`` (the global step), ``ctx.training`` (train or
            validation step), ``ctx.log(name, value)`` (log ``train/<name>`` per step or
            ``val/<name>`` per validation pass) and ``ctx.reference()`` (a context manager
            yielding a frozen reference model; only for objectives that declare
            ``reference=True``). An implementation that does not name ``ctx`` does not get it.

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
        A value is a float or a :class:`framework.Score` (its ``higher_is_better``
        overrides the metric's declared direction; its ``stderr`` is recorded). A selected
        name may be answered with several keys that start with it (``rouge`` -> ``rouge1``,
        ``rouge2``, ``rougeL``). Fan-out: the dicts of all plugins are merged.
    """


@hookspec(firstresult=True)
def tunesmith_sequence_reward(
    name: str,
    logps: torch.Tensor,
    tokens: torch.Tensor,
    ref_logps: torch.Tensor | None,
    options: DictConfig,
) -> torch.Tensor | None:
    """The objective's implicit reward of answers, from their log-probabilities.

    Called by metrics that rank answers the way the trained objective does
    (``preference_accuracy``, ``reward_margin``), once per side (base, tuned) and batch.

    Args:
        name: the training objective (``cfg.objective.name``).
        logps: the scored model's summed log-probability of each answer, ``(n,)``.
        tokens: each answer's number of tokens, ``(n,)`` (float).
        ref_logps: the reference model's (the base model), when the objective declares
            ``reference=True``; ``None`` otherwise.
        options: the objective's options (as ``LossContext.options``).

    Returns:
        The reward of each answer, ``(n,)`` (DPO: ``beta * (logps - ref_logps)``). ``None``
        when the plugin does not serve ``name``: the metrics then rank by the per-token
        log-probability ``logps / tokens``. First result wins.
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


# --------------------------------------------------------------------------- board


@hookspec
def tunesmith_board_pages() -> list[Any] | None:
    """Add pages to the board (``python run.py stages=[board]``, docs/board.md).

    Called once when the board starts, before it serves anything.

    Returns:
        A list of pages: ``plugins.board.Page(path, title, router, nav=True, order=100)``
        objects (or mappings with those keys), where ``router`` is a FastAPI ``APIRouter``
        holding the page's routes, or a function ``build(board) -> APIRouter``. ``None``
        when the plugin adds no page. Fan-out: every plugin's pages are served; two pages
        with the same path are an error.
    """


# --------------------------------------------------------------------------- report notes


@hookspec
def tunesmith_report_notes(
    results: dict[str, Any], rows: list[dict], cfg: DictConfig
) -> list[Note | str] | None:
    """Add notes (warnings, advice) to the evaluation report, after both sides were scored.

    Called once by the evaluate stage, after ``metrics.json`` is written and before the
    table is printed. A note is printed under the table in the console and written into
    ``eval_report.md`` (e.g. the ``diversity`` plugin warns there when the tuned model's
    answers collapsed).

    Args:
        results: what ``metrics.json`` holds (``base``, ``tuned``, ``directions``...).
        rows: one dict per scored example: ``id``, ``prompt``, ``messages``, ``reference``,
            and the generated answer of each side that generated (``base``, ``tuned``);
            empty when no metric generated answers.
        cfg: the run config.

    Returns:
        A list of :class:`framework.Note` (a plain string is an ``info`` note), or ``None``.
        Fan-out: every plugin's notes are shown, warnings first.
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

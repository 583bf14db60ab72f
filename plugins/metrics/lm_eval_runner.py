"""The ``lm_eval`` metric's work: lm-evaluation-harness tasks on the model in memory.

Serves :mod:`plugins.metrics.lm_eval_tasks`. lm-eval (the ``eval`` extra) is imported only
when a run selects the metric. What it does:

* :func:`options` reads ``evaluator.lm_eval.*`` and resolves ``include_path``;
* :func:`check` finds every task name before any stage runs (a misspelled name is an error
  with lm-eval's nearest names);
* :func:`evaluate` runs ``lm_eval.simple_evaluate`` on one side (base or tuned) with an
  ``HFLM`` wrapping the model in memory (a PEFT model included), writes lm-eval's results
  and per-sample logs under ``<run dir>/lm_eval/<side>/`` and returns
  :class:`framework.Score` values keyed ``lm_eval/<task>/<metric>``;
* :func:`forgetting_section` turns both sides' results into the report's forgetting table
  and its one-line verdict.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework import Score
from framework.errors import ConfigError, TunesmithError, did_you_mean

log = logging.getLogger(__name__)

#: The metric name (``evaluator.metrics=[lm_eval]``) and the prefix of every key it reports.
NAME = "lm_eval"
#: Where the results and sample logs of each side go, under the run directory.
OUT_DIR = "lm_eval"
INSTALL_HINT = 'install the extra: pip install -e ".[eval]" (or make install)'


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """``evaluator.lm_eval.*``, checked.

    Attributes:
        tasks: lm-eval task, group or tag names (glob patterns allowed: ``mmlu_*``).
        include_path: folders of task YAMLs, resolved against where the command ran.
        num_fewshot: few-shot examples per item; ``None``: each task's own default.
        limit: items per task (an int) or a share of them (a float below 1); ``None``: all.
        batch_size: items per forward pass (an int, or ``auto``).
        apply_chat_template: wrap each prompt in the model's chat template.
        fewshot_as_multiturn: with the chat template, give few-shot examples as turns.
        system_instruction: a system prompt for every item.
        gen_kwargs: generation settings for generative tasks (``max_gen_toks``...).
        subtasks: also report each direct subtask of a requested group.
        log_samples: write per-sample logs.
        bootstrap_iters: resamples for the standard error of non-mean metrics (0: none).
        noise: how many combined standard errors a drop must exceed to be reported as real.
    """

    tasks: tuple[str, ...]
    include_path: tuple[Path, ...] = ()
    num_fewshot: int | None = None
    limit: int | float | None = None
    batch_size: int | str = 16
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    gen_kwargs: dict[str, Any] | None = None
    subtasks: bool = False
    log_samples: bool = True
    bootstrap_iters: int = 1000
    noise: float = 2.0


def _where(key: str) -> str:
    return f"evaluator.{NAME}.{key}"


def _user_dir(value: Any, key: str) -> Path:
    from framework.data.prepare import original_cwd

    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        path = original_cwd() / path
    if not path.is_dir():
        raise ConfigError(
            f"The folder of task YAMLs '{value}' does not exist"
            + (f" (looked for {path})." if str(path) != str(value) else "."),
            where=f"{_where(key)}={value}",
            hint="give a folder that holds lm-eval task YAMLs (a relative path is taken from "
            "where you run the command), e.g. data/lm_eval_tasks.",
        )
    return path


def options(cfg: DictConfig) -> Options:
    """Read and check ``evaluator.lm_eval.*`` of ``cfg``.

    Raises:
        ConfigError: no task is named, a value has the wrong type, or an ``include_path``
            folder does not exist.
    """
    node = OmegaConf.select(cfg, f"evaluator.{NAME}", default=None)
    raw: dict[str, Any] = {}
    if node is not None:
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    tasks = raw.get("tasks")
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError(
            "The lm_eval metric is selected but no lm-eval task is named.",
            where=_where("tasks"),
            hint=f"name tasks, e.g. {_where('tasks')}=[general_knowledge] with "
            f"{_where('include_path')}=data/lm_eval_tasks (offline), or "
            f"{_where('tasks')}=[arc_easy] (downloads its data set); or use "
            "evaluator=forgetting.",
        )
    include = raw.get("include_path")
    if include in (None, ""):
        include = []
    elif isinstance(include, str):
        include = [include]
    limit = raw.get("limit")
    if limit is not None:
        if not isinstance(limit, int | float) or limit <= 0:
            raise ConfigError(
                f"limit must be a positive number, not {limit!r}.",
                where=_where("limit"),
                hint="an item count per task (e.g. 100), a share below 1 (e.g. 0.2), or null.",
            )
        if isinstance(limit, float) and limit >= 1:
            limit = int(limit)
    gen = raw.get("gen_kwargs")
    if gen is not None and not isinstance(gen, Mapping | str):
        raise ConfigError(
            f"gen_kwargs must be a mapping, not {gen!r}.",
            where=_where("gen_kwargs"),
            hint="e.g. {max_gen_toks: 256, do_sample: false}",
        )
    batch = raw.get("batch_size", 16)
    if not (isinstance(batch, int) and batch > 0) and not str(batch).startswith("auto"):
        raise ConfigError(
            f"batch_size must be a positive int or 'auto', not {batch!r}.",
            where=_where("batch_size"),
        )
    unknown = sorted(set(raw) - set(Options.__dataclass_fields__))
    if unknown:
        raise ConfigError(
            f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}."
            f"{did_you_mean(unknown[0], Options.__dataclass_fields__)}",
            where=_where(unknown[0]),
            hint=f"the options are: {', '.join(Options.__dataclass_fields__)}.",
        )
    return Options(
        tasks=tuple(str(t).strip() for t in tasks),
        include_path=tuple(_user_dir(p, "include_path") for p in include),
        num_fewshot=None if raw.get("num_fewshot") is None else int(raw["num_fewshot"]),
        limit=limit,
        batch_size=batch,
        apply_chat_template=bool(raw.get("apply_chat_template", False)),
        fewshot_as_multiturn=bool(raw.get("fewshot_as_multiturn", False)),
        system_instruction=raw.get("system_instruction") or None,
        gen_kwargs=dict(gen) if isinstance(gen, Mapping) else gen,
        subtasks=bool(raw.get("subtasks", False)),
        log_samples=bool(raw.get("log_samples", True)),
        bootstrap_iters=int(raw.get("bootstrap_iters", 1000)),
        noise=float(raw.get("noise", 2.0)),
    )


def selected(cfg: DictConfig) -> bool:
    """Whether ``evaluator.metrics`` names the ``lm_eval`` metric."""
    metrics = OmegaConf.select(cfg, "evaluator.metrics", default=None) or []
    return NAME in [str(m) for m in metrics]


# --------------------------------------------------------------------------- lm-eval


def require_lm_eval() -> Any:
    """Import ``lm_eval``, or say how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401 - fails without transformers bits
    except ImportError as exc:
        raise TunesmithError(
            f"The lm_eval metric needs the lm-evaluation-harness package, which is not "
            f"installed ({exc}).",
            where=f"evaluator.metrics=[..., {NAME}]",
            hint=INSTALL_HINT,
        ) from exc
    return lm_eval


@lru_cache(maxsize=4)
def _task_manager(include: tuple[str, ...], defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def task_manager(opts: Options) -> Any:
    """An lm-eval ``TaskManager`` that knows every task in ``opts.tasks``.

    Only the ``include_path`` folders are indexed when they hold every named task (fast,
    and offline by nature); lm-eval's own few thousand tasks are indexed otherwise.

    Raises:
        ConfigError: a task name is unknown (with lm-eval's nearest names).
    """
    require_lm_eval()
    include = tuple(str(p) for p in opts.include_path)
    if include:
        local = _task_manager(include, False)
        if not _unknown(opts.tasks, local.all_tasks):
            return local
    manager = _task_manager(include, True)
    unknown = _unknown(opts.tasks, manager.all_tasks)
    if unknown:
        lines = []
        for name in unknown:
            near = difflib.get_close_matches(name, manager.all_tasks, n=6, cutoff=0.6)
            lines.append(
                f"  '{name}': nearest lm-eval names: {', '.join(near)}"
                if near
                else f"  '{name}': no similar name"
            )
        where_from = "lm-eval's tasks" + (
            f" and {', '.join(include)}" if include else " (no include_path given)"
        )
        raise ConfigError(
            f"Unknown lm-eval task{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)} (looked in {where_from}).\n" + "\n".join(lines),
            where=_where("tasks"),
            hint="fix the name (`lm-eval ls tasks` lists them all), or point "
            f"{_where('include_path')} at the folder of your task YAMLs.",
        )
    return manager


def _unknown(names: tuple[str, ...], known: list[str]) -> list[str]:
    known_set = set(known)
    out = []
    for name in names:
        if any(c in name for c in "*?["):
            if not fnmatch.filter(known, name):
                out.append(name)
        elif name not in known_set:
            out.append(name)
    return out


def check(cfg: DictConfig) -> None:
    """Check ``evaluator.lm_eval.*`` before any stage runs (no model is loaded)."""
    task_manager(options(cfg))


# --------------------------------------------------------------------------- one side


def run_dir_of(ctx: Any) -> Path:
    """The directory of the run being evaluated (where ``predictions.jsonl`` goes)."""
    store = getattr(ctx, "store", None)
    if store is not None and getattr(store, "path", None) is not None:
        return Path(store.path).parent
    return Path(str(OmegaConf.select(ctx.cfg, "paths.run_dir", default=".")))


#: lm-eval warnings that are expected here and say nothing to act on (dropped from the log).
_EXPECTED = (
    "`pretrained` model kwarg is not of type `str`",  # we pass the model in memory on purpose
    "Passed an already-initialized model",
    "Custom kwargs can be passed to `--metadata`",  # a task with a custom loader (ours)
)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _EXPECTED)


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval's log at WARNING (its INFO lines repeat what tunesmith says), without the
    expected warnings above, while it runs."""
    top = logging.getLogger("lm_eval")
    level = top.level
    if level == logging.NOTSET or level < logging.WARNING:
        top.setLevel(logging.WARNING)
    drop = _DropExpected()
    loggers = [logging.getLogger(f"lm_eval.{n}") for n in ("models.huggingface", "api.task")]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        top.setLevel(level)
        for logger in loggers:
            logger.removeFilter(drop)


def simple_evaluate(model: Any, tokenizer: Any, opts: Options) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``model`` (in memory) with ``opts``; lm-eval's results."""
    with _quiet_lm_eval():
        return _simple_evaluate(model, tokenizer, opts)


def _simple_evaluate(model: Any, tokenizer: Any, opts: Options) -> dict[str, Any]:
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(opts)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=opts.batch_size)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(opts.tasks),
            task_manager=manager,
            num_fewshot=opts.num_fewshot,
            limit=opts.limit,
            batch_size=opts.batch_size,
            apply_chat_template=opts.apply_chat_template,
            fewshot_as_multiturn=opts.fewshot_as_multiturn and opts.apply_chat_template,
            system_instruction=opts.system_instruction,
            gen_kwargs=opts.gen_kwargs,
            log_samples=opts.log_samples,
            bootstrap_iters=opts.bootstrap_iters,
        )
    except (ConnectionError, OSError) as exc:
        if "offline" in str(exc).lower() or isinstance(exc, ConnectionError):
            raise TunesmithError(
                f"An lm-eval task needs a data set that is not on this machine: {exc}",
                where=_where("tasks"),
                hint="Hub tasks (mmlu, arc_easy...) download their data sets: run online "
                "(tunesmith currently sets HF_HUB_OFFLINE=1, see docs/evaluation.md) or with "
                "the data set in your HF cache; local tasks from include_path work offline.",
            ) from exc
        raise
    if results is None:  # only on non-zero ranks of a distributed run
        return {}
    return results


def scores(results: Mapping[str, Any], opts: Options) -> dict[str, Score]:
    """``{"lm_eval/<task>/<metric>": Score}`` for the reported tasks of lm-eval's ``results``.

    A metric computed after a filter other than ``none`` is keyed
    ``lm_eval/<task>/<metric>/<filter>`` (gsm8k: ``exact_match/strict-match``).
    """
    out: dict[str, Score] = {}
    table = results.get("results", {})
    directions = results.get("higher_is_better", {})
    for task in reported_tasks(results, opts):
        row = table.get(task, {})
        for key, value in row.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            number = _number(value)
            if number is None:
                continue
            stderr = _number(row.get(f"{metric}_stderr,{filt}"))
            better = directions.get(task, {}).get(metric)
            name = f"{NAME}/{task}/{metric}" + ("" if filt == "none" else f"/{filt}")
            out[name] = Score(
                number, higher_is_better=None if better is None else bool(better), stderr=stderr
            )
    return out


def reported_tasks(results: Mapping[str, Any], opts: Options) -> list[str]:
    """The tasks whose metrics are reported: the names asked for (a group as its aggregate;
    with ``subtasks``, also its direct subtasks), and what a tag or pattern expanded to."""
    table = results.get("results", {})
    children = results.get("group_subtasks", {})
    wanted: list[str] = []
    reachable: set[str] = set()

    def below(name: str) -> None:
        for child in children.get(name, []):
            if child not in reachable:
                reachable.add(child)
                below(child)

    for name in table:
        if name in opts.tasks or any(fnmatch.fnmatch(name, p) for p in opts.tasks):
            wanted.append(name)
    for name in list(wanted):
        below(name)
        if opts.subtasks or not _number_row(table.get(name, {})):
            wanted += [c for c in children.get(name, []) if c in table]
    wanted += [n for n in table if n not in reachable and n not in wanted]
    return list(dict.fromkeys(wanted))


def _number_row(row: Mapping[str, Any]) -> bool:
    return any("," in k and _number(v) is not None for k, v in row.items())


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def write_side(directory: Path, results: Mapping[str, Any]) -> None:
    """Write lm-eval's results (``results.json``) and per-sample logs
    (``samples_<task>.jsonl``, in lm-eval's own format) under ``directory``."""
    from lm_eval.utils import handle_non_serializable, sanitize_list

    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("samples_*.jsonl"):
        old.unlink()
    for task, samples in (results.get("samples") or {}).items():
        with (directory / f"samples_{task}.jsonl").open("w", encoding="utf-8") as f:
            for sample in samples:
                row = dict(sample)
                row["arguments"] = {
                    f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(arg)}
                    for i, arg in enumerate(sample.get("arguments", []))
                }
                row["resps"] = sanitize_list(sample.get("resps", []))
                row["filtered_resps"] = sanitize_list(sample.get("filtered_resps", []))
                row["target"] = str(sample.get("target"))
                f.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False))
                f.write("\n")
    summary = {k: v for k, v in results.items() if k != "samples"}
    (directory / "results.json").write_text(
        json.dumps(summary, default=handle_non_serializable, ensure_ascii=False, indent=2),
        encoding="utf-8",
    )


def evaluate(ctx: Any) -> dict[str, Score]:
    """Run the configured lm-eval tasks on ``ctx.model`` (one side) and return its scores."""
    opts = options(ctx.cfg)
    log.info("%s: lm-eval tasks %s", ctx.label, ", ".join(opts.tasks))
    results = simple_evaluate(ctx.model, ctx.tokenizer, opts)
    if not results:
        return {}
    write_side(run_dir_of(ctx) / OUT_DIR / str(ctx.label), results)
    return scores(results, opts)


# --------------------------------------------------------------------------- the report


def read_side(run_dir: Path, side: str) -> dict[str, Any] | None:
    path = Path(run_dir) / OUT_DIR / side / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(value: float | None, pct: bool) -> str:
    if value is None:
        return ""
    return f"{100 * value:.1f}" if pct else f"{value:.4g}"


def verdict(
    task: str, metric: str, base: Score, tuned: Score, noise: float, pct: bool
) -> str | None:
    """One plain sentence on ``tuned`` vs ``base`` for a metric with a direction and errors."""
    if base.higher_is_better is None or base.stderr is None or tuned.stderr is None:
        return None
    combined = math.hypot(base.stderr, tuned.stderr)
    delta = tuned.value - base.value
    loss = -delta if base.higher_is_better else delta
    unit = " points" if pct else ""
    size = f"{_fmt(abs(delta), pct)}{unit}"
    span = f"{_fmt(base.value, pct)} → {_fmt(tuned.value, pct)}"
    noise_text = f"{noise:g} × the combined standard error {_fmt(combined, pct)}{unit}"
    if combined == 0:
        return None
    if loss > noise * combined:
        return (
            f"**The fine-tune cost general ability on {task}**: {metric} fell by {size} "
            f"({span}), more than {noise_text}."
        )
    if -loss > noise * combined:
        return (
            f"The fine-tune improved {task}: {metric} rose by {size} ({span}), more than "
            f"{noise_text}."
        )
    return (
        f"No measurable loss of general ability on {task}: {metric} changed by "
        f"{'+' if delta >= 0 else '-'}{size} ({span}), within {noise_text}."
    )


def _limit_text(limit: int | float) -> str:
    if isinstance(limit, float) and limit < 1:
        return f" · {100 * limit:g}% of the items of each task"
    return f" · at most {limit} items per task"


def forgetting_section(run_dir: Path, metrics: Mapping[str, Any], cfg: DictConfig) -> str | None:
    """The report's lm-eval section: a base / tuned table with standard errors, and for each
    task asked for, whether the tuned model lost more than the noise."""
    if not selected(cfg):
        return None
    opts = options(cfg)
    sides = {}
    for side in ("base", "tuned"):
        keys = [k for k in metrics.get(side, {}) if k.startswith(f"{NAME}/")]
        data = read_side(run_dir, side) if keys else None
        if data:
            sides[side] = scores(data, opts)
    if not sides:
        return None
    names = list(dict.fromkeys(k for s in sides.values() for k in s))
    # accuracies and other shares are shown in percent
    pct = all(0.0 <= s[k].value <= 1.0 for s in sides.values() for k in s)
    unit = " (%)" if pct else ""
    lines = [
        "## Benchmarks (lm-eval)",
        "",
        f"Tasks: {', '.join(opts.tasks)}"
        + (_limit_text(opts.limit) if opts.limit else "")
        + (f" · {opts.num_fewshot}-shot" if opts.num_fewshot is not None else "")
        + (" · chat template" if opts.apply_chat_template else "")
        + f". Per-sample logs: `{OUT_DIR}/<side>/samples_<task>.jsonl`.",
        "",
        f"| task / metric | base{unit} | tuned{unit} | change | ± (2 s.e.) |",
        "|---|---:|---:|---:|---:|",
    ]
    asked = [n for n in names if n.removeprefix(f"{NAME}/").partition("/")[0] in opts.tasks]
    verdicts = []
    for name in names:
        base, tuned = sides.get("base", {}).get(name), sides.get("tuned", {}).get(name)
        short = name.removeprefix(f"{NAME}/")
        change = spread = ""
        if base is not None and tuned is not None:
            sign = "+" if tuned.value >= base.value else "-"
            change = f"{sign}{_fmt(abs(tuned.value - base.value), pct)}"
            if name in asked or not asked:
                task, _, metric = short.partition("/")
                line = verdict(task, metric, base, tuned, opts.noise, pct)
                if line:
                    verdicts.append(line)
        errors = [s.stderr for s in (base, tuned) if s is not None]
        if errors and None not in errors:
            spread = _fmt(2 * math.hypot(*errors), pct)
        lines.append(
            f"| {short} | {_fmt(base.value, pct) if base else ''} | "
            f"{_fmt(tuned.value, pct) if tuned else ''} | {change} | {spread} |"
        )
    lines += [
        "",
        "The standard error (s.e.) shrinks with the number of items"
        + (": with n items an accuracy near 50% has a s.e. of about 50/√n points" if pct else "")
        + ". A change smaller than about twice the combined s.e. of both sides "
        "(the last column) is noise.",
        "",
    ]
    if verdicts:
        lines += [*verdicts, ""]
    elif "tuned" not in sides:
        lines += ["(Only one side was scored: no comparison.)", ""]
    for line in verdicts:
        log.info("%s", line.replace("**", ""))
    return "\n".join(lines)

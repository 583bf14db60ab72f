"""The evaluate stage: score the base and the tuned model on the same examples, side by side.

What it does, in order:

1. picks the examples (``evaluator.split``, default ``test``; ``evaluator.max_samples``);
2. finds the tuned model: ``evaluator.adapter`` (an adapter folder on the configured model),
   ``evaluator.model_path`` (any local model folder), ``evaluator.run`` (a finished run
   directory), or what this run trained; with none of them only the configured model is
   scored (as ``base``);
3. scores the base model first (for an adapter: the same model with the adapter disabled;
   otherwise a fresh build, see ``evaluator.base``), then the tuned one, through the
   ``tunesmith_compute_metrics`` plugins;
4. writes ``metrics.json``, ``predictions.jsonl`` and ``eval_report.md`` and prints the table.

Generations are appended to ``predictions.jsonl`` batch by batch (flushed), so a stopped
evaluation keeps what it produced and a re-run generates only what is missing, per side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from framework.chat import IGNORE_INDEX, prompt_of, reference_of, render
from framework.errors import ConfigError, DataError, ModelError
from framework.run import Run, atomic_path, read_jsonl, write_json

log = logging.getLogger(__name__)

SIDES = ("base", "tuned")
PREDICTIONS = "predictions.jsonl"
PREDICTIONS_META = "predictions.meta.json"
#: Tokens that end an assistant turn in common chat templates; generation stops at any of
#: them that the tokenizer knows, besides the model's own ``eos_token_id``.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


# --------------------------------------------------------------------------- token statistics


@dataclass
class TokenStats:
    """Teacher-forced statistics over answer tokens: summed loss, count, correct argmax."""

    nll: float = 0.0
    tokens: int = 0
    correct: int = 0

    def __iadd__(self, other: TokenStats) -> TokenStats:
        self.nll += other.nll
        self.tokens += other.tokens
        self.correct += other.correct
        return self

    @property
    def perplexity(self) -> float:
        """``exp`` of the mean token cross-entropy (``nan`` without tokens)."""
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def accuracy(self) -> float:
        """Share of answer tokens the model ranks first (``nan`` without tokens)."""
        return self.correct / self.tokens if self.tokens else float("nan")


def stats_from_logits(logits: Any, targets: Any) -> TokenStats:
    """Token statistics from next-token ``logits`` ``[n, vocab]`` and ``targets`` ``[n]``."""
    import torch.nn.functional as F

    logits = logits.float()
    return TokenStats(
        nll=float(F.cross_entropy(logits, targets, reduction="sum")),
        tokens=int(targets.numel()),
        correct=int((logits.argmax(-1) == targets).sum()),
    )


def batch_token_stats(model: Any, batch: dict[str, Any]) -> TokenStats:
    """Token statistics of one collated batch (``input_ids``, ``attention_mask``, ``labels``).

    The vocabulary projection is computed only at labelled positions when the model allows
    it (the same fast path as the training loss), else from the full logits.
    """
    import torch

    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    if not bool(mask.any()):
        return TokenStats()
    with torch.no_grad():
        parts = _decoder_and_head(model)
        if parts is not None:
            decoder, head = parts
            hidden = decoder(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            logits = head(hidden[:, :-1][mask])
        else:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            # prompt tuning prepends virtual tokens: keep the positions of the real ones
            logits = out.logits[:, -batch["labels"].shape[1] :][:, :-1][mask]
    return stats_from_logits(logits, targets[mask])


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    try:  # the training loss's fast path; absent or changed -> full logits
        from framework.losses import _decoder_and_head as split
    except ImportError:
        return None
    return split(model)


def _encoded_answers(tokenizer: Any, examples: list[dict], cfg: DictConfig) -> list[dict]:
    from framework.chat import encode_chat

    return [
        encode_chat(tokenizer, e["messages"], int(cfg.data.max_length))
        for e in examples
        if "messages" in e
    ]


def token_stats(model: Any, tokenizer: Any, examples: list[dict], cfg: DictConfig) -> TokenStats:
    """Token statistics over the answers (assistant turns) of ``examples``."""
    import torch

    from framework.datamodule import Collator

    model.eval()
    rows = _encoded_answers(tokenizer, examples, cfg)
    collate = Collator(tokenizer.pad_token_id)
    bs = int(cfg.evaluator.get("batch_size", 16))
    total = TokenStats()
    with torch.inference_mode():
        for i in range(0, len(rows), bs):
            batch = {k: v.to(model.device) for k, v in collate(rows[i : i + bs]).items()}
            total += batch_token_stats(model, batch)
    return total


def answer_loss(
    model: Any, tokenizer: Any, examples: list[dict], cfg: DictConfig
) -> tuple[float, int]:
    """Summed cross-entropy over answer tokens of ``examples``, and the token count."""
    stats = token_stats(model, tokenizer, examples, cfg)
    return stats.nll, stats.tokens


def choice_logliks(
    model: Any,
    tokenizer: Any,
    examples: list[dict],
    choices: list[list[str]],
    cfg: DictConfig,
) -> list[list[tuple[float, int]]]:
    """Log-likelihood of each choice as the answer of each example.

    Each choice replaces the example's last assistant turn; its tokens (end of turn
    included, so a choice that would go on is not favoured) are scored given the prompt.

    Returns:
        For each example, ``(summed log-probability, token count)`` per choice.
    """
    import torch
    import torch.nn.functional as F

    from framework.chat import encode_chat
    from framework.datamodule import Collator

    model.eval()
    flat: list[dict] = []
    for ex, opts in zip(examples, choices, strict=True):
        prompt = prompt_of(ex)
        for c in opts:
            messages = [*prompt, {"role": "assistant", "content": c}]
            flat.append(encode_chat(tokenizer, messages, int(cfg.data.max_length)))
    collate = Collator(tokenizer.pad_token_id)
    bs = int(cfg.evaluator.get("batch_size", 16))
    scores: list[tuple[float, int]] = []
    with torch.inference_mode():
        for i in range(0, len(flat), bs):
            batch = {k: v.to(model.device) for k, v in collate(flat[i : i + bs]).items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits[:, -batch["labels"].shape[1] :][:, :-1]
            targets = batch["labels"][:, 1:]
            mask = targets != IGNORE_INDEX
            logp = F.log_softmax(logits.float(), dim=-1)
            picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            picked = picked * mask
            for row in range(picked.shape[0]):
                scores.append((float(picked[row].sum()), int(mask[row].sum())))
    out: list[list[tuple[float, int]]] = []
    k = 0
    for opts in choices:
        out.append(scores[k : k + len(opts)])
        k += len(opts)
    return out


# --------------------------------------------------------------------------- generation


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a turn: the model's ``eos_token_id`` plus known end-of-turn tokens."""
    ids: list[int] = []
    gen_cfg = getattr(model, "generation_config", None)
    for source in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.append(source)
        elif source:
            ids.extend(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    unk = getattr(tokenizer, "unk_token_id", None)
    seen: list[int] = []
    for i in ids:
        if i not in seen and (i != unk or i == tokenizer.eos_token_id):
            seen.append(i)
    return seen


def generation_kwargs(model: Any, tokenizer: Any, ev: DictConfig) -> dict[str, Any]:
    """Keyword arguments for ``model.generate`` from the ``evaluator`` group."""
    do_sample = bool(ev.get("do_sample", False))
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(ev.get("max_new_tokens", 64)),
        "do_sample": do_sample,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": end_of_turn_ids(model, tokenizer),
    }
    if int(kwargs["max_new_tokens"]) < 1:
        raise ConfigError(
            "evaluator.max_new_tokens must be at least 1.", where="evaluator.max_new_tokens"
        )
    if do_sample:
        kwargs["temperature"] = float(ev.get("temperature", 1.0))
        kwargs["top_p"] = float(ev.get("top_p", 1.0))
        if ev.get("top_k") is not None:
            kwargs["top_k"] = int(ev.top_k)
    else:  # greedy: silence sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if ev.get("repetition_penalty") not in (None, 1, 1.0):
        kwargs["repetition_penalty"] = float(ev.repetition_penalty)
    stop = [str(s) for s in (ev.get("stop") or [])]
    if stop:
        kwargs["stop_strings"] = stop
        kwargs["tokenizer"] = tokenizer
    return kwargs


def generate_batch(model: Any, tokenizer: Any, prompts: list[str], kwargs: dict) -> list[str]:
    """Generate one left-padded batch; returns the decoded new text of each prompt."""
    import torch

    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
        model.device
    )
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    stops = kwargs.get("stop_strings") or []
    # a byte-level BPE cut by max_new_tokens can end inside a character: drop the remains
    return [_cut_at_stop(t, stops).rstrip("\ufffd").strip() for t in texts]


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    ev: DictConfig,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Generate an answer for each rendered prompt, in batches; stop at end of turn.

    Greedy unless ``ev.do_sample``. Prompts are batched longest first (less padding, and a
    batch that does not fit in memory fails at once, not at the end).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (padding is switched to the left while generating).
        prompts: prompts already rendered with the chat template.
        ev: the ``evaluator`` group (``batch_size``, ``max_new_tokens``, sampling keys).
        on_batch: called after each batch with the prompt indices and their answers.

    Returns:
        The answers, in the order of ``prompts``.
    """
    import torch

    model.eval()
    kwargs = generation_kwargs(model, tokenizer, ev)
    batch_size = max(1, int(ev.get("batch_size", 16)))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    seed = ev.get("seed")
    outputs: list[str | None] = [None] * len(prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if kwargs["do_sample"] and seed is not None:
                torch.manual_seed(int(seed) + start)
            texts = generate_batch(model, tokenizer, [prompts[i] for i in idx], kwargs)
            for i, t in zip(idx, texts, strict=True):
                outputs[i] = t
            if on_batch is not None:
                on_batch(idx, texts)
    finally:
        tokenizer.padding_side = old_side
    return [o or "" for o in outputs]


# --------------------------------------------------------------------------- predictions file


def example_id(example: dict) -> str:
    """A stable id of an example: a hash of its content (not of its position)."""
    from framework.data import example_key

    return example_key(example)[:16]


class PredictionStore:
    """``predictions.jsonl``: one row per example, appended per batch and flushed.

    While an evaluation runs, a row holds one side's answer (``{"id", ..., "base": ...}``);
    :meth:`compact` merges them into one row per example with both sides once it is done.
    ``predictions.meta.json`` keeps a fingerprint of each side's model and generation
    settings: answers made under other settings are not reused.
    """

    def __init__(self, path: Path, fingerprints: dict[str, str]) -> None:
        self.path = Path(path)
        self.meta_path = self.path.with_name(PREDICTIONS_META)
        self.fingerprints = dict(fingerprints)
        self.rows: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        meta = {}
        if self.meta_path.exists():
            meta = json.loads(self.meta_path.read_text(encoding="utf-8")).get("sides", {})
        rewrite = False
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d is cut short (a stopped write); dropping it", self.path, n)
                    rewrite = True
                    continue
                if "id" not in row:
                    log.warning(
                        "%s:%d has no example id (an older format); it is not reused",
                        self.path,
                        n,
                    )
                    rewrite = True
                    continue
                self.rows.setdefault(row["id"], {}).update(row)
        for side in SIDES:
            have = sum(side in r for r in self.rows.values())
            if have and meta.get(side) != self.fingerprints.get(side):
                log.warning(
                    "%d %s answers in %s were made by another model or other generation "
                    "settings; they will be generated again",
                    have,
                    side,
                    self.path.name,
                )
                for r in self.rows.values():
                    r.pop(side, None)
                rewrite = True
        if rewrite:
            self._rewrite(list(self.rows))
        if self.rows:
            done = {s: sum(s in r for r in self.rows.values()) for s in SIDES}
            log.info("continuing from %s: %s", self.path, done)

    def answer(self, side: str, ex_id: str) -> str | None:
        """The stored answer of ``side`` for example ``ex_id``, if any."""
        return self.rows.get(ex_id, {}).get(side)

    def append(self, side: str, rows: list[dict]) -> None:
        """Append ``rows`` (each with ``id`` and ``side``'s answer) and flush them to disk."""
        self._write_meta(side)
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows.setdefault(row["id"], {}).update(row)
            f.flush()
            os.fsync(f.fileno())

    def _write_meta(self, side: str) -> None:
        meta = {"sides": {}}
        if self.meta_path.exists():
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        if meta["sides"].get(side) != self.fingerprints.get(side):
            meta["sides"][side] = self.fingerprints.get(side)
            write_json(self.meta_path, meta)

    def _rewrite(self, order: list[str]) -> None:
        with atomic_path(self.path) as tmp, tmp.open("w", encoding="utf-8") as f:
            for i in order:
                if i in self.rows:
                    f.write(json.dumps(self.rows[i], ensure_ascii=False) + "\n")

    def compact(self, order: list[str]) -> list[dict]:
        """Rewrite the file as one merged row per example, in ``order``; return the rows."""
        keep = [i for i in dict.fromkeys(order) if i in self.rows]
        if self.path.exists():  # nothing to write when no metric generated anything
            self._rewrite(keep)
        return [self.rows[i] for i in keep]


# --------------------------------------------------------------------------- context


@dataclass
class EvalContext:
    """What a metric plugin needs: the model, the examples, and cached model outputs.

    ``generations()``, ``token_stats()`` and ``choice_logliks()`` are computed once, on first
    use, and shared by every metric.

    Attributes:
        model: the model being scored (for ``base`` of an adapter run: the tuned model with
            its adapter disabled while the side is scored).
        tokenizer: its tokenizer.
        examples: the examples scored (chat examples with a last assistant turn).
        cfg: the run config; ``cfg.evaluator`` is the evaluator group.
        label: the side, ``base`` or ``tuned``.
        store: where answers are appended as they are produced (``None``: kept in memory).
    """

    model: Any
    tokenizer: Any
    examples: list[dict]
    cfg: DictConfig
    label: str = "tuned"
    store: PredictionStore | None = None
    _generations: list[str] | None = field(default=None, repr=False)
    _stats: TokenStats | None = field(default=None, repr=False)
    _choice: list[list[tuple[float, int]]] | None = field(default=None, repr=False)

    @property
    def evaluator(self) -> DictConfig:
        return self.cfg.evaluator

    def references(self) -> list[str]:
        return [reference_of(e) for e in self.examples]

    def prompts(self) -> list[str]:
        return [
            render(self.tokenizer, prompt_of(e), add_generation_prompt=True) for e in self.examples
        ]

    def language(self) -> str:
        """``zh`` or ``en``: ``evaluator.language``, or detected from the references."""
        from framework.scoring import detect_language

        return detect_language(self.references(), self.evaluator.get("language", "auto"))

    def generations(self) -> list[str]:
        """The answer of every example, generated in batches (and stored) on first use.

        Answers already in ``predictions.jsonl`` for this side (same model and settings)
        are reused; the others are generated and appended batch by batch.
        """
        if self._generations is None:
            self._generations = self._generate()
        return self._generations

    def _generate(self) -> list[str]:
        prompts = self.prompts()
        ids = [example_id(e) for e in self.examples]
        answers: list[str | None] = [None] * len(prompts)
        if self.store is not None:
            answers = [self.store.answer(self.label, i) for i in ids]
        todo = [k for k, a in enumerate(answers) if a is None]
        if todo:
            log.info("%s: generating %d answers", self.label, len(todo))

        def keep(batch: list[int], texts: list[str]) -> None:
            rows = []
            for j, text in zip(batch, texts, strict=True):
                k = todo[j]
                answers[k] = text
                ex = self.examples[k]
                rows.append(
                    {
                        "id": ids[k],
                        "source": ex.get("_source"),
                        "messages": prompt_of(ex),
                        "prompt": prompts[k],
                        "reference": reference_of(ex),
                        self.label: text,
                    }
                )
            if self.store is not None:
                self.store.append(self.label, rows)

        if todo:
            generate(self.model, self.tokenizer, [prompts[k] for k in todo], self.evaluator, keep)
        return [a or "" for a in answers]

    def token_stats(self) -> TokenStats:
        """Teacher-forced loss / accuracy over the answer tokens of the examples."""
        if self._stats is None:
            self._stats = token_stats(self.model, self.tokenizer, self.examples, self.cfg)
        return self._stats

    def loss_stats(self) -> tuple[float, int]:
        """``(summed token loss, token count)`` over the answers of the examples."""
        s = self.token_stats()
        return s.nll, s.tokens

    def choices(self) -> list[list[str]]:
        """The answer options of each example, for classification / multiple choice.

        From the example's own ``choices`` field, else ``evaluator.choices``, else the
        distinct references of the examples scored (at most ``evaluator.max_choices``).
        """
        fixed = [str(c) for c in (self.evaluator.get("choices") or [])]
        if not fixed and not all(e.get("choices") for e in self.examples):
            fixed = sorted(set(self.references()))
            limit = int(self.evaluator.get("max_choices", 20))
            if len(fixed) > limit:
                raise ConfigError(
                    f"Choice metrics need a short list of answers, but the {len(fixed)} "
                    f"examples have {len(fixed)} different references (more than "
                    f"evaluator.max_choices={limit}).",
                    where="evaluator.choices",
                    hint="list the labels, e.g. evaluator.choices=[positive,negative], or "
                    "drop accuracy/choice_accuracy from evaluator.metrics for free-text data.",
                )
        return [
            [str(c) for c in e["choices"]] if e.get("choices") else fixed for e in self.examples
        ]

    def choice_logliks(self) -> list[list[tuple[float, int]]]:
        """``(log-likelihood, tokens)`` of each choice of each example (computed once)."""
        if self._choice is None:
            self._choice = choice_logliks(
                self.model, self.tokenizer, self.examples, self.choices(), self.cfg
            )
        return self._choice


# --------------------------------------------------------------------------- scoring


def score(run: Run, ctx: EvalContext) -> dict[str, float]:
    """All selected metrics for one model, in the order of ``evaluator.metrics``.

    A selected name is computed when a plugin returns it, or returns keys that start with
    it (``rouge`` gives ``rouge1``, ``rouge2``, ``rougeL``).
    """
    names = [str(m) for m in run.cfg.evaluator.metrics]
    merged: dict[str, float] = {}
    for result in run.hook.tunesmith_compute_metrics(metrics=names, ctx=ctx):
        merged.update(result or {})
    out: dict[str, float] = {}
    missing = []
    for n in names:
        keys = [k for k in merged if k == n or (k.startswith(n) and n not in merged)]
        if not keys:
            missing.append(n)
        for k in keys:
            out[k] = float(merged[k])
    if missing:
        raise ConfigError(
            f"No plugin computed the metrics {missing}.",
            where="evaluator.metrics",
            hint="a plugin that declares a metric must return it from tunesmith_compute_metrics.",
        )
    return out


def check_metrics(run: Run) -> None:
    """Reject a misspelled metric name before any model is loaded."""
    if not run.cfg.evaluator.metrics:
        raise ConfigError(
            "No metric is selected.",
            where="evaluator.metrics",
            hint="e.g. evaluator.metrics=[perplexity,exact_match]",
        )
    for name in run.cfg.evaluator.metrics:
        run.plugins.require("metric", str(name))


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
    from framework.data import original_cwd

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
        from framework.models import check_model_dir

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
        from framework.models import load_pretrained

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


# --------------------------------------------------------------------------- the stage


def eval_examples(run: Run, run_src: Path | None = None) -> list[dict]:
    """The examples to score: ``evaluator.split`` (``test``), at most ``evaluator.max_samples``.

    With ``evaluator.run`` and ``evaluator.run_data`` (the default) they come from that run's
    prepared splits; otherwise from this run's data (prepared now if needed).
    """
    from framework.data import SPLITS, load_splits

    ev = run.cfg.evaluator
    split = str(ev.get("split", "test"))
    if split not in SPLITS:
        raise ConfigError(
            f"Unknown split '{split}'.", where="evaluator.split", hint=f"one of {SPLITS}"
        )
    if run_src is not None and ev.get("run_data", True):
        path = run_src / "data" / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(
                f"The run has no {split} split.",
                where=str(path),
                hint="set evaluator.run_data=false to use the configured data set instead.",
            )
        examples = read_jsonl(path)
    else:
        examples = load_splits(run)[split]
    examples = [e for e in examples if _has_answer(e)]
    limit = ev.get("max_samples")
    if limit:
        examples = examples[: int(limit)]
    if not examples:
        raise ConfigError(
            f"The {split} split has no example with an answer, so there is nothing to evaluate.",
            where=f"data.split.{split}",
            hint=f"give the {split} split a share, e.g. data.split.{split}=0.1",
        )
    return examples


def _has_answer(example: dict) -> bool:
    return any(m.get("role") == "assistant" for m in example.get("messages", []))


def evaluate(run: Run) -> dict[str, Any]:
    """Run the evaluate stage: base vs tuned on the same examples.

    Returns:
        ``{"base": {metric: value}, "tuned": {metric: value}}`` (a side is absent when it was
        not scored).
    """
    from framework.eval_report import print_table, write_report

    cfg = run.cfg
    check_metrics(run)
    run_src = apply_run_source(run)
    examples = eval_examples(run, run_src)
    source = resolve_tuned(run, run_src)
    compare = bool(cfg.evaluator.get("compare_base", True))
    if source is None:
        log.warning(
            "no tuned model (nothing trained in %s, and no evaluator.adapter / model_path / "
            "run): scoring the configured model '%s' only",
            run.dir,
            cfg.model.name,
        )
    store = PredictionStore(run.dir / PREDICTIONS, fingerprints(run, source))
    tuned, tokenizer = load_tuned(run, source) if source is not None else (None, None)
    results: dict[str, dict[str, float]] = {}
    mode = "rebuild"
    if compare or source is None:
        mode = base_mode(run, tuned)
        log.info("scoring base model (%s) on %d examples", mode, len(examples))
        with base_model(run, tuned, tokenizer, mode) as (model, tok):
            results["base"] = score(run, EvalContext(model, tok, examples, cfg, "base", store))
    if tuned is not None:
        log.info("scoring tuned model (%s) on %d examples", source.describe(), len(examples))
        results["tuned"] = score(run, EvalContext(tuned, tokenizer, examples, cfg, "tuned", store))
        if source.kind == "artifact" and run_src is None:  # this run's own: keep for export
            run.model, run.tokenizer, run.trained = tuned, tokenizer, True

    rows = store.compact([example_id(e) for e in examples])
    run.metrics.update(results)
    write_json(run.dir / "metrics.json", results)
    print_table(results, title=f"evaluation on the {cfg.evaluator.get('split', 'test')} split")
    write_report(
        run.dir / "eval_report.md",
        results,
        rows,
        cfg,
        info={
            "examples": len(examples),
            "tuned": source.describe() if source else "none",
            "base": BASE_MODES[mode].format(model=cfg.model.name)
            if "base" in results
            else "not scored (evaluator.compare_base=false)",
        },
    )
    return results


def perplexity(ctx: EvalContext) -> float:
    """Perplexity of ``ctx``'s model over the answers of its examples."""
    return ctx.token_stats().perplexity

"""The evaluate stage: score base and tuned model on the test split, side by side."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from framework.chat import IGNORE_INDEX, prompt_of, reference_of, render
from framework.data import load_splits
from framework.errors import ConfigError
from framework.run import Run, atomic_path, write_json

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    """What a metric plugin needs: the model, the test examples, and cached model outputs.

    ``generations()`` and ``loss_stats()`` are computed once, on first use, and shared by
    every metric.
    """

    model: Any
    tokenizer: Any
    examples: list[dict]
    cfg: DictConfig
    label: str = "tuned"
    _generations: list[str] | None = field(default=None, repr=False)
    _loss: tuple[float, int] | None = field(default=None, repr=False)

    @property
    def evaluator(self) -> DictConfig:
        return self.cfg.evaluator

    def references(self) -> list[str]:
        return [reference_of(e) for e in self.examples]

    def prompts(self) -> list[str]:
        return [
            render(self.tokenizer, prompt_of(e), add_generation_prompt=True) for e in self.examples
        ]

    def generations(self) -> list[str]:
        """Greedy (by default) batched generations for every test prompt."""
        if self._generations is None:
            self._generations = generate(self.model, self.tokenizer, self.prompts(), self.evaluator)
        return self._generations

    def loss_stats(self) -> tuple[float, int]:
        """``(summed token loss, token count)`` over the answers of the test examples."""
        if self._loss is None:
            self._loss = answer_loss(self.model, self.tokenizer, self.examples, self.cfg)
        return self._loss


def generate(model: Any, tokenizer: Any, prompts: list[str], ev: DictConfig) -> list[str]:
    """Generate an answer for each prompt, in left-padded batches; stop at end of turn."""
    import torch

    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    batch_size = int(ev.get("batch_size", 16))
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": int(ev.max_new_tokens),
        "do_sample": bool(ev.get("do_sample", False)),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if gen_kwargs["do_sample"]:
        gen_kwargs.update(temperature=float(ev.temperature), top_p=float(ev.top_p))
    outputs: list[str] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer(
                    prompts[i : i + batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(model.device)
                out = model.generate(**enc, **gen_kwargs)
                new = out[:, enc["input_ids"].shape[1] :]
                outputs.extend(
                    t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)
                )
    finally:
        tokenizer.padding_side = old_side
    return outputs


def answer_loss(
    model: Any, tokenizer: Any, examples: list[dict], cfg: DictConfig
) -> tuple[float, int]:
    """Summed cross-entropy over answer tokens of ``examples``, and the token count."""
    import torch
    import torch.nn.functional as F

    from framework.chat import encode_chat
    from framework.datamodule import Collator

    model.eval()
    rows = [
        encode_chat(tokenizer, e["messages"], int(cfg.data.max_length))
        for e in examples
        if "messages" in e
    ]
    collate = Collator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    bs = int(cfg.evaluator.get("batch_size", 16))
    with torch.inference_mode():
        for i in range(0, len(rows), bs):
            batch = {k: v.to(model.device) for k, v in collate(rows[i : i + bs]).items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            logits = logits[:, -batch["labels"].shape[1] :]  # prompt tuning prepends virtual tokens
            targets = batch["labels"][:, 1:]
            mask = targets != IGNORE_INDEX
            total += float(
                F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="sum")
            )
            count += int(mask.sum())
    return total, count


def score(run: Run, ctx: EvalContext) -> dict[str, float]:
    """All selected metrics for one model."""
    names = [str(m) for m in run.cfg.evaluator.metrics]
    merged: dict[str, float] = {}
    for result in run.hook.tunesmith_compute_metrics(metrics=names, ctx=ctx):
        merged.update(result or {})
    missing = [n for n in names if n not in merged]
    if missing:
        raise ConfigError(f"No plugin computed the metrics {missing}.", where="evaluator.metrics")
    return {n: merged[n] for n in names}


def check_metrics(run: Run) -> None:
    for name in run.cfg.evaluator.metrics:
        run.plugins.require("metric", str(name))


def evaluate(run: Run) -> dict[str, Any]:
    """Run the evaluate stage: base vs tuned on the test split."""
    cfg = run.cfg
    check_metrics(run)
    test = load_splits(run)["test"]
    limit = cfg.evaluator.get("max_samples")
    if limit:
        test = test[: int(limit)]
    if not test:
        raise ConfigError(
            "The test split is empty, so there is nothing to evaluate.",
            where="data.split.test",
            hint="give the test split a share, e.g. data.split.test=0.1",
        )
    tuned_model, tokenizer = run.load_tuned()
    results: dict[str, dict[str, float]] = {}
    contexts: dict[str, EvalContext] = {}
    if cfg.evaluator.get("compare_base", True):
        base_model, base_tok = _base_for(run, tuned_model)
        contexts["base"] = EvalContext(base_model, base_tok, test, cfg, label="base")
        results["base"] = score(run, contexts["base"])
        del base_model
    contexts["tuned"] = EvalContext(tuned_model, tokenizer, test, cfg, label="tuned")
    results["tuned"] = score(run, contexts["tuned"])

    write_predictions(run, test, contexts)
    run.metrics.update(results)
    write_json(run.dir / "metrics.json", results)
    print_table(results)
    return results


def _base_for(run: Run, tuned_model: Any) -> tuple[Any, Any]:
    """A fresh base model; reuses nothing of the tuned one so the comparison is honest."""
    return run.build_base()


def write_predictions(run: Run, test: list[dict], contexts: dict[str, EvalContext]) -> None:
    """``predictions.jsonl``: prompt, reference and each model's answer, one line per example."""
    tok = contexts["tuned"].tokenizer
    with atomic_path(run.dir / "predictions.jsonl") as tmp, tmp.open("w", encoding="utf-8") as f:
        for i, ex in enumerate(test):
            row = {
                "source": ex.get("_source"),
                "prompt": render(tok, prompt_of(ex), add_generation_prompt=True),
                "reference": reference_of(ex),
            }
            for label, ctx in contexts.items():
                if ctx._generations is not None:
                    row[label] = ctx._generations[i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def print_table(results: dict[str, dict[str, float]]) -> None:
    """Print metric | base | tuned | change."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation on the test split")
    for col in ("metric", "base", "tuned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    tuned = results.get("tuned", {})
    base = results.get("base", {})
    for name, value in tuned.items():
        b = base.get(name)
        change = "" if b is None else f"{value - b:+.4g}"
        table.add_row(name, "" if b is None else f"{b:.4g}", f"{value:.4g}", change)
    Console().print(table)


def perplexity(ctx: EvalContext) -> float:
    total, count = ctx.loss_stats()
    return math.exp(total / count) if count else float("nan")

"""Teacher-forced token statistics: loss, perplexity, token accuracy, choice log-likelihoods."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from framework.data.chat import IGNORE_INDEX, prompt_of

log = logging.getLogger(__name__)


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

    from framework.train.losses import _decoder_and_head

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


def _encoded_answers(tokenizer: Any, examples: list[dict], cfg: DictConfig) -> list[dict]:
    from framework.data.chat import encode_chat

    return [
        encode_chat(tokenizer, e["messages"], int(cfg.data.max_length))
        for e in examples
        if "messages" in e
    ]


def token_stats(model: Any, tokenizer: Any, examples: list[dict], cfg: DictConfig) -> TokenStats:
    """Token statistics over the answers (assistant turns) of ``examples``."""
    import torch

    from framework.data.datamodule import Collator

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

    from framework.data.chat import encode_chat
    from framework.data.datamodule import Collator

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

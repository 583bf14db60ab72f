"""What the preference objectives (``dpo``, ``orpo``, ``simpo``, ``kto``) share.

* **Encoding** (:func:`encode_pair`, :func:`encode_unpaired`): the prompt is rendered once with
  the model's chat template and each answer after it, so both answers of a pair follow the
  very same prompt tokens. A pair longer than ``data.max_length`` loses tokens from the start
  of its prompt first (the end of the prompt, next to the answers, stays), and only when the
  prompt is down to half of ``max_length`` are the answers cut at their end, both to the same
  budget.
* **Batching** (:func:`collate_pairs`, :func:`collate_unpaired`): ``chosen_*`` / ``rejected_*``
  tensors padded to one width, or for unpaired examples the examples and their mismatched
  twins (prompt *i* with the completion of example *i+1*) for KTO's KL estimate.
* **Sequence log-probabilities** (:func:`sequence_logps`): the summed log-probability of each
  row's answer tokens, its token count and (for an NLL term) nothing else: every objective's
  loss is a function of these, which is what the equivalence tests check.
* **Reference log-probabilities** (:func:`reference_logps`): from the batch when they were
  precomputed before training (``objective.precompute_ref=true``), else from the reference
  model (``ctx.reference()``).
* **Logging** (:func:`log_rewards`): ``rewards/chosen``, ``rewards/rejected``,
  ``rewards/accuracy``, ``rewards/margin``, ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from framework.data.chat import IGNORE_INDEX, render
from framework.data.collate import pad_ids, pad_labels
from framework.data.records import preference_of
from framework.errors import ConfigError
from plugins.objectives.pair_fields import (  # noqa: F401  (re-exported)
    PAIR_FIELDS,
    PAIR_PRECOMPUTED,
    UNPAIRED_FIELDS,
    UNPAIRED_PRECOMPUTED,
    UNPAIRED_PRECOMPUTED_FIELDS,
)

# --------------------------------------------------------------------------- encoding


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_and_answers(
    tokenizer: Any, prompt: list[dict], answers: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """Token ids of the rendered prompt (with the generation prompt) and of each answer.

    An answer's tokens are what the chat template puts after the prompt for that assistant
    turn (its text and the end-of-turn token), tokenised on their own.
    """
    prompt_text = render(tokenizer, prompt, add_generation_prompt=True)
    out = []
    for answer in answers:
        full = render(tokenizer, [*prompt, {"role": "assistant", "content": answer}])
        if full.startswith(prompt_text):
            rest = full[len(prompt_text) :]
        else:  # a template that renders the prompt differently before an answer (rare)
            start = full.find(answer)
            rest = full[start:] if start >= 0 else answer
        out.append(_tokens(tokenizer, rest))
    return _tokens(tokenizer, prompt_text), out


def truncate(
    prompt: list[int], answers: list[list[int]], max_length: int
) -> tuple[list[int], list[list[int]]]:
    """Cut a prompt and its answers to ``max_length`` tokens per sequence, the same way for all.

    The prompt loses tokens from its start first, down to half of ``max_length`` (or what
    the longest answer leaves, if more); then every answer is cut at its end to the budget
    left. Both answers of a pair always follow the same prompt tokens.
    """
    longest = max((len(a) for a in answers), default=0)
    if len(prompt) + longest <= max_length:
        return prompt, answers
    keep = max(max_length - longest, min(len(prompt), max_length // 2))
    prompt = prompt[len(prompt) - keep :] if keep > 0 else []
    budget = max_length - len(prompt)
    return prompt, [a[:budget] for a in answers]


def _sequence(prompt: list[int], answer: list[int]) -> dict[str, list[int]]:
    return {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}


def encode_pair(example: dict, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Tokenise a preference pair: the chosen conversation as ``input_ids``/``labels`` (what the
    data report and spot check show) and the rejected one as ``rejected_input_ids`` /
    ``rejected_labels``; labels are ``-100`` on the prompt."""
    prompt, chosen, rejected = preference_of(example)
    prompt_ids, (good, bad) = prompt_and_answers(tokenizer, prompt, [chosen, rejected])
    prompt_ids, (good, bad) = truncate(prompt_ids, [good, bad], max_length)
    rej = _sequence(prompt_ids, bad)
    return {
        **_sequence(prompt_ids, good),
        "rejected_input_ids": rej["input_ids"],
        "rejected_labels": rej["labels"],
    }


def encode_unpaired(example: dict, tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Tokenise an unpaired example (``messages`` ending with the completion, plus ``label``):
    ``input_ids``/``labels`` of the conversation, ``kto_label`` (1 desirable, 0 not) and
    ``prompt_length`` (where the completion starts)."""
    messages = example["messages"]
    prompt_ids, (answer,) = prompt_and_answers(
        tokenizer, list(messages[:-1]), [messages[-1]["content"]]
    )
    prompt_ids, (answer,) = truncate(prompt_ids, [answer], max_length)
    return {
        **_sequence(prompt_ids, answer),
        "kto_label": int(bool(example["label"])),
        "prompt_length": len(prompt_ids),
    }


# --------------------------------------------------------------------------- batching


def _floats(rows: list[dict], key: str) -> torch.Tensor | None:
    if key not in rows[0]:
        return None
    return torch.tensor([float(r[key]) for r in rows], dtype=torch.float32)


def collate_pairs(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch pairs: ``chosen_*`` and ``rejected_*`` tensors padded to one width (and the
    precomputed reference log-probabilities, when the rows have them)."""
    sides = {
        "chosen": ([r["input_ids"] for r in rows], [r["labels"] for r in rows]),
        "rejected": ([r["rejected_input_ids"] for r in rows], [r["rejected_labels"] for r in rows]),
    }
    width = max(len(ids) for seqs, _ in sides.values() for ids in seqs)
    batch: dict[str, torch.Tensor] = {}
    for side, (seqs, labels) in sides.items():
        ids, mask = pad_ids(seqs, pad_token_id, width)
        batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = ids, mask
        batch[f"{side}_labels"] = pad_labels(labels, width)
    for key in PAIR_PRECOMPUTED:
        values = _floats(rows, key)
        if values is not None:
            batch[key] = values
    batch["num_tokens"] = (
        batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
    )
    return batch


def mismatched(rows: list[dict], max_length: int | None = None) -> list[dict[str, list[int]]]:
    """KTO's mismatched pairs: the prompt of row *i* with the completion of row *i+1* (the
    last row takes the first's), labelled on the completion; a single row keeps its own."""
    out = []
    n = len(rows)
    for i, row in enumerate(rows):
        other = rows[(i + 1) % n]
        prompt = list(row["input_ids"][: int(row["prompt_length"])])
        answer = list(other["input_ids"][int(other["prompt_length"]) :])
        if max_length is not None:
            prompt, (answer,) = truncate(prompt, [answer], max_length)
        out.append(_sequence(prompt, answer))
    return out


def collate_unpaired(
    rows: list[dict], pad_token_id: int, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Batch unpaired examples: ``input_ids``/``attention_mask``/``labels``, ``kto_label``, and
    ``kl_*`` tensors of the mismatched pairs: the rows' own fixed twins when the reference was
    precomputed, else made within the batch (:func:`mismatched`)."""
    ids, mask = pad_ids([r["input_ids"] for r in rows], pad_token_id)
    batch: dict[str, torch.Tensor] = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": pad_labels([r["labels"] for r in rows], ids.shape[1]),
        "kto_label": torch.tensor([bool(r["kto_label"]) for r in rows]),
    }
    if "kl_input_ids" in rows[0]:  # fixed when the reference was precomputed
        twins = [{"input_ids": r["kl_input_ids"], "labels": r["kl_labels"]} for r in rows]
    else:
        twins = mismatched(rows, max_length)
    kl_ids, kl_mask = pad_ids([t["input_ids"] for t in twins], pad_token_id)
    batch["kl_input_ids"], batch["kl_attention_mask"] = kl_ids, kl_mask
    batch["kl_labels"] = pad_labels([t["labels"] for t in twins], kl_ids.shape[1])
    for key in UNPAIRED_PRECOMPUTED:
        values = _floats(rows, key)
        if values is not None:
            batch[key] = values
    batch["num_tokens"] = mask.sum() + kl_mask.sum()
    return batch


# --------------------------------------------------------------------------- log-probabilities


@dataclass
class SequenceLogps:
    """The answers' log-probabilities of a batch of rows.

    Attributes:
        logps: the summed log-probability of each row's answer tokens, shape ``(n,)``.
        tokens: each row's number of answer tokens, shape ``(n,)`` (float).
    """

    logps: torch.Tensor
    tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """The per-token (length-normalised) log-probability of each row."""
        return self.logps / self.tokens.clamp(min=1)

    def split(self, n: int) -> tuple[SequenceLogps, SequenceLogps]:
        """The first ``n`` rows and the rest."""
        return (
            SequenceLogps(self.logps[:n], self.tokens[:n]),
            SequenceLogps(self.logps[n:], self.tokens[n:]),
        )


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> SequenceLogps:
    """:class:`SequenceLogps` from a causal LM's ``logits`` and the ``labels`` (-100 = none).

    The logits at position *t* predict the label at *t+1* (the usual shift).
    """
    logits = logits[:, -labels.shape[1] :][:, :-1].float()  # prompt tuning adds virtual tokens
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1))
    return SequenceLogps((picked.squeeze(-1) * keep).sum(-1), keep.sum(-1).float())


def sequence_logps(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> SequenceLogps:
    """Run ``model`` on padded rows and return their answers' log-probabilities."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return logps_from_logits(logits, labels)


def pair_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``(input_ids, attention_mask, labels)`` of the chosen rows followed by the rejected."""
    return tuple(
        torch.cat([batch[f"chosen_{key}"], batch[f"rejected_{key}"]])
        for key in ("input_ids", "attention_mask", "labels")
    )


def policy_pair_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[SequenceLogps, ...]:
    """The trained model's :class:`SequenceLogps` of the chosen and the rejected answers (one
    forward pass over both)."""
    out = sequence_logps(model, *pair_inputs(batch))
    return out.split(batch["chosen_input_ids"].shape[0])


def reference_pair_logps(batch: dict[str, torch.Tensor], ctx: Any) -> tuple[torch.Tensor, ...]:
    """The reference's summed log-probabilities of the chosen and the rejected answers:
    precomputed (``objective.precompute_ref=true``) or from ``ctx.reference()``."""
    if all(k in batch for k in PAIR_PRECOMPUTED):
        return tuple(batch[k] for k in PAIR_PRECOMPUTED)
    with ctx.reference() as ref:
        out = sequence_logps(ref, *pair_inputs(batch))
    chosen, rejected = out.split(batch["chosen_input_ids"].shape[0])
    return chosen.logps, rejected.logps


def chosen_nll(chosen: SequenceLogps) -> torch.Tensor:
    """The mean negative log-likelihood per chosen answer token over the batch (the SFT loss
    on the chosen answers)."""
    return -chosen.logps.sum() / chosen.tokens.sum().clamp(min=1)


# --------------------------------------------------------------------------- logging


def log_rewards(
    ctx: Any,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
) -> None:
    """Log the rewards of a batch of pairs (detached): their means, margin and accuracy (the
    share of pairs whose chosen reward is higher), and the answers' summed log-probs."""
    chosen, rejected = chosen.detach(), rejected.detach()
    margin = chosen - rejected
    ctx.log("rewards/chosen", chosen.mean())
    ctx.log("rewards/rejected", rejected.mean())
    ctx.log("rewards/accuracy", (margin > 0).float().mean())
    ctx.log("rewards/margin", margin.mean())
    ctx.log("logps/chosen", chosen_logps.detach().mean())
    ctx.log("logps/rejected", rejected_logps.detach().mean())


# --------------------------------------------------------------------------- options


def positive(options: Any, key: str, objective: str) -> float:
    """``options[key]`` as a float > 0, or a :class:`ConfigError` naming the option."""
    value = float(options[key])
    if not value > 0:
        raise ConfigError(
            f"objective.{key} must be > 0 for objective={objective}, got {value}.",
            where=f"objective.{key}",
            hint=f"e.g. objective.{key}={options[key] if value > 0 else 0.1}",
        )
    return value


def in_range(options: Any, key: str, low: float, high: float, objective: str) -> float:
    """``options[key]`` as a float in ``[low, high)``, or a :class:`ConfigError`."""
    value = float(options[key])
    if not low <= value < high:
        raise ConfigError(
            f"objective.{key} must be in [{low}, {high}) for objective={objective}, got {value}.",
            where=f"objective.{key}",
        )
    return value


# --------------------------------------------------------------------------- precomputing


def precompute_pairs(
    rows: list[dict], reference: Any, pad_token_id: int, batch_size: int
) -> list[dict[str, float]]:
    """The reference's summed log-probabilities of each pair's answers, for
    ``objective.precompute_ref=true`` (``reference``: the model as training starts)."""
    out: list[dict[str, float]] = []
    for start in range(0, len(rows), max(batch_size, 1)):
        batch = collate_pairs(rows[start : start + batch_size], pad_token_id)
        with torch.no_grad():
            logps = sequence_logps(reference, *pair_inputs(batch))
        chosen, rejected = logps.split(batch["chosen_input_ids"].shape[0])
        out += [
            {"ref_chosen_logps": float(c), "ref_rejected_logps": float(r)}
            for c, r in zip(chosen.logps.tolist(), rejected.logps.tolist(), strict=True)
        ]
    return out


def precompute_unpaired(
    rows: list[dict], reference: Any, pad_token_id: int, batch_size: int, max_length: int
) -> list[dict[str, Any]]:
    """For ``objective.precompute_ref=true`` with unpaired examples: each example's mismatched
    twin, fixed once in the data's order (the prompt of example *i* with the completion of
    example *i+1*, as TRL fixes them when it prepares the data), and the reference's
    log-probabilities of the completion and of the twin."""
    twins = mismatched(rows, max_length)
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), max(batch_size, 1)):
        chunk = [
            {**row, "kl_input_ids": twin["input_ids"], "kl_labels": twin["labels"]}
            for row, twin in zip(
                rows[start : start + batch_size], twins[start : start + batch_size], strict=True
            )
        ]
        batch = collate_unpaired(chunk, pad_token_id, max_length)
        with torch.no_grad():
            own = sequence_logps(
                reference, batch["input_ids"], batch["attention_mask"], batch["labels"]
            )
            kl = sequence_logps(
                reference, batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"]
            )
        out += [
            {
                "kl_input_ids": row["kl_input_ids"],
                "kl_labels": row["kl_labels"],
                "ref_logps": float(a),
                "ref_kl_logps": float(b),
            }
            for row, a, b in zip(chunk, own.logps.tolist(), kl.logps.tolist(), strict=True)
        ]
    return out

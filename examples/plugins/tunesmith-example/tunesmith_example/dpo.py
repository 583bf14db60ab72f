"""Direct preference optimisation (DPO, Rafailov et al. 2023) on chosen/rejected pairs.

An encoded pair holds the chosen conversation as ``input_ids``/``labels`` (so tunesmith's
data report and spot check show it) and the rejected one as ``rejected_input_ids`` /
``rejected_labels``; labels are -100 outside the answers, so the log-probability of a
sequence is that of its answer. The loss pushes the policy to prefer the chosen answer more
than the reference model does:

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

which is log(2) while the policy is the reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from framework.data.chat import IGNORE_INDEX, encode_chat
from framework.data.collate import pad_ids, pad_labels
from framework.data.records import preference_of

#: What an encoded pair carries besides input_ids/labels (declared in Objective.batch_fields).
FIELDS = ("rejected_input_ids", "rejected_labels")


def encode_pair(example: dict, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Tokenise the chosen and the rejected conversation of a preference pair."""
    prompt, chosen, rejected = preference_of(example)
    good = encode_chat(tokenizer, [*prompt, {"role": "assistant", "content": chosen}], max_length)
    bad = encode_chat(tokenizer, [*prompt, {"role": "assistant", "content": rejected}], max_length)
    return {**good, "rejected_input_ids": bad["input_ids"], "rejected_labels": bad["labels"]}


def collate_pairs(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch pairs: ``chosen_*`` and ``rejected_*`` tensors padded to one width."""
    sides = {
        "chosen": ([r["input_ids"] for r in rows], [r["labels"] for r in rows]),
        "rejected": ([r["rejected_input_ids"] for r in rows], [r["rejected_labels"] for r in rows]),
    }
    width = max(len(ids) for seqs, _ in sides.values() for ids in seqs)
    batch: dict[str, torch.Tensor] = {}
    for side, (seqs, labels) in sides.items():
        batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = pad_ids(
            seqs, pad_token_id, width
        )
        batch[f"{side}_labels"] = pad_labels(labels, width)
    real = batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
    batch["num_tokens"] = real  # non-pad tokens: tunesmith's tokens/s
    return batch


def answer_logps(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Any:
    """The summed log-probability of the labelled tokens of each row."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logits = logits[:, -ids.shape[1] :][:, :-1].float()  # prompt tuning adds virtual tokens
    targets = labels[:, 1:]
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1))
    return (picked.squeeze(-1) * (targets != IGNORE_INDEX)).sum(-1)


def dpo_loss(model: Any, batch: dict[str, torch.Tensor], ctx: Any) -> torch.Tensor:
    """The DPO loss of a batch of pairs; logs the implicit rewards and their accuracy."""
    ids, mask, labels = (
        torch.cat([batch[f"chosen_{key}"], batch[f"rejected_{key}"]])
        for key in ("input_ids", "attention_mask", "labels")
    )
    policy = answer_logps(model, ids, mask, labels)
    with ctx.reference() as reference:
        baseline = answer_logps(reference, ids, mask, labels)
    n = batch["chosen_input_ids"].shape[0]
    rewards = float(ctx.options.beta) * (policy - baseline)
    chosen, rejected = rewards[:n], rewards[n:]
    margin = chosen - rejected
    ctx.log("rewards/chosen", chosen.mean().detach())
    ctx.log("rewards/rejected", rejected.mean().detach())
    ctx.log("rewards/margin", margin.mean().detach())
    ctx.log("rewards/accuracy", (margin > 0).float().mean())
    return -F.logsigmoid(margin).mean()

"""Kahneman-Tversky optimisation (``objective=kto``; Ethayarajh et al. 2024, arXiv:2402.01306).

Trains on unpaired examples (``data=kto``: a prompt, a completion, ``label: true|false``).
With ``h = pi - ref`` the log-probability ratio of a completion (summed over its tokens) and
``z`` the batch estimate of ``KL(pi || ref)``: the mean of ``pi - ref`` over mismatched pairs
(each prompt with another example's completion), clamped at 0 and not differentiated:

    desirable:   desirable_weight   * (1 - sigmoid(beta * (h - z)))
    undesirable: undesirable_weight * (1 - sigmoid(beta * (z - h)))

averaged over the batch. The implicit reward of a completion is ``beta * h``. Weights make up
for unbalanced data: the paper keeps ``desirable_weight * n_desirable`` within 1 to 4/3 of
``undesirable_weight * n_undesirable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from framework import Objective, hookimpl
from plugins.objectives import pair_fields, pair_hooks

if TYPE_CHECKING:
    import torch

NAME = "kto"
OPTIONS = {
    "beta": 0.1,
    "desirable_weight": 1.0,
    "undesirable_weight": 1.0,
    "precompute_ref": False,
}


def kto_losses(
    policy: torch.Tensor,
    reference: torch.Tensor,
    labels: torch.Tensor,
    policy_kl: torch.Tensor,
    reference_kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The KTO loss of each example, its reward ``beta (pi - ref)`` and the KL estimate.

    Args:
        policy: the policy's summed log-probability of each completion, ``(n,)``.
        reference: the reference's.
        labels: ``True`` for desirable completions, ``(n,)``.
        policy_kl: the policy's log-probabilities of the mismatched completions, ``(n,)``.
        reference_kl: the reference's.
        beta: the strength of the reference constraint.
        desirable_weight: the weight of desirable examples' losses.
        undesirable_weight: the weight of undesirable examples' losses.
    """
    import torch

    z = (policy_kl - reference_kl).mean().clamp(min=0).detach()
    h = policy - reference
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (h - z)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z - h)))
    return torch.where(labels, desirable, undesirable), beta * h.detach(), z


def loss(model: Any, batch: dict[str, torch.Tensor], ctx: Any) -> torch.Tensor:
    """The KTO loss of a batch of unpaired examples; logs rewards, log-probabilities, KL."""
    import torch

    from plugins.objectives import preference as pref

    options = ctx.options
    beta = pref.positive(options, "beta", NAME)
    weights = [pref.positive(options, k, NAME) for k in ("desirable_weight", "undesirable_weight")]
    own = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    twin = (batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"])
    policy = pref.sequence_logps(model, *own)
    with torch.no_grad():
        policy_kl = pref.sequence_logps(model, *twin).logps
    if all(k in batch for k in pref.UNPAIRED_PRECOMPUTED):
        reference, reference_kl = batch["ref_logps"], batch["ref_kl_logps"]
    else:
        with ctx.reference() as ref:
            reference = pref.sequence_logps(ref, *own).logps
            reference_kl = pref.sequence_logps(ref, *twin).logps
    labels = batch["kto_label"]
    losses, rewards, z = kto_losses(
        policy.logps, reference, labels, policy_kl, reference_kl, beta, *weights
    )
    log_unpaired(ctx, rewards, policy.logps, labels)
    ctx.log("kl", z)
    return losses.mean()


def log_unpaired(
    ctx: Any, rewards: torch.Tensor, logps: torch.Tensor, labels: torch.Tensor
) -> None:
    """Log the rewards of desirable (``chosen``) and undesirable (``rejected``) examples, when
    the batch has any; ``rewards/accuracy`` is the share whose reward has its label's sign,
    ``rewards/margin`` the desirable mean minus the undesirable mean."""
    import torch

    good, bad = rewards[labels], rewards[~labels]
    if good.numel():
        ctx.log("rewards/chosen", good.mean())
        ctx.log("logps/chosen", logps[labels].detach().mean())
    if bad.numel():
        ctx.log("rewards/rejected", bad.mean())
        ctx.log("logps/rejected", logps[~labels].detach().mean())
    if good.numel() and bad.numel():
        ctx.log("rewards/margin", good.mean() - bad.mean())
    right = torch.where(labels, rewards > 0, rewards < 0)
    ctx.log("rewards/accuracy", right.float().mean())


@hookimpl
def tunesmith_provides() -> list[Objective]:
    return [
        Objective(
            NAME,
            options=OPTIONS,
            example="unpaired",
            batch_fields=pair_fields.UNPAIRED_FIELDS,
            reference=True,
            packing=False,
            precomputed=pair_fields.UNPAIRED_PRECOMPUTED_FIELDS,
            description="Kahneman-Tversky optimisation on unpaired good/bad completions (data=kto)",
        )
    ]


@hookimpl
def tunesmith_encode_example(name: str, example: dict, tokenizer: Any, cfg: Any) -> dict | None:
    from plugins.objectives import preference as pref

    if name != NAME or "label" not in example:
        return None
    return pref.encode_unpaired(example, tokenizer, int(cfg.data.max_length))


@hookimpl
def tunesmith_collate(name: str, rows: list[dict], pad_token_id: int, cfg: Any) -> dict | None:
    from plugins.objectives import preference as pref

    if name != NAME:
        return None
    return pref.collate_unpaired(rows, pad_token_id, int(cfg.data.max_length))


tunesmith_compute_loss = pair_hooks.compute_loss(NAME, loss)


@hookimpl
def tunesmith_precompute(
    name: str, rows: list[dict], reference: Any, pad_token_id: int, cfg: Any, options: Any
) -> list[dict] | None:
    from plugins.objectives import preference as pref

    if name != NAME or not options.precompute_ref:
        return None
    return pref.precompute_unpaired(
        rows, reference, pad_token_id, int(cfg.data.batch_size), int(cfg.data.max_length)
    )


@hookimpl
def tunesmith_sequence_reward(
    name: str, logps: Any, tokens: Any, ref_logps: Any, options: Any
) -> Any:
    if name != NAME or ref_logps is None:
        return None
    return float(options.beta) * (logps - ref_logps)

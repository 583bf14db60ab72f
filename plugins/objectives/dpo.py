"""Direct preference optimisation (``objective=dpo``; Rafailov et al. 2023, arXiv:2305.18290).

The policy learns to prefer the chosen answer over the rejected one more than the reference
model does. With ``h = (pi_c - ref_c) - (pi_r - ref_r)`` (summed answer log-probabilities of
the policy ``pi`` and the reference ``ref``):

* ``sigmoid`` (DPO): ``-(1-ls) log sigmoid(beta h) - ls log sigmoid(-beta h)``; a
  ``label_smoothing`` ``ls`` > 0 is conservative DPO (cDPO), for noisy labels;
* ``hinge`` (SLiC): ``relu(1 - beta h)``;
* ``ipo`` (Azar et al. 2023): ``(h - 1/(2 beta))^2`` on length-normalised log-probabilities.

``sft_weight`` > 0 adds that times the NLL of the chosen answers (RPO, Pang et al. 2024). The
implicit reward of an answer is ``beta (pi - ref)``; at the start (policy = reference) the
sigmoid loss is log 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from framework import Objective, hookimpl
from framework.errors import ConfigError
from plugins.objectives import pair_fields, pair_hooks

if TYPE_CHECKING:
    import torch

NAME = "dpo"
LOSS_TYPES = ("sigmoid", "ipo", "hinge")
OPTIONS = {
    "beta": 0.1,
    "label_smoothing": 0.0,
    "loss_type": "sigmoid",
    "sft_weight": 0.0,
    "precompute_ref": False,
}


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of each pair, and the chosen and rejected rewards ``beta (pi - ref)``.

    Args:
        policy_chosen: the policy's log-probabilities of the chosen answers, ``(n,)``.
        policy_rejected: ... of the rejected answers.
        ref_chosen: the reference's log-probabilities of the chosen answers.
        ref_rejected: ... of the rejected answers.
        beta: the strength of the reference constraint.
        label_smoothing: the assumed share of flipped labels (``sigmoid`` only).
        loss_type: ``sigmoid``, ``ipo`` or ``hinge``.
    """
    import torch
    import torch.nn.functional as F

    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = (
            -F.logsigmoid(beta * h) * (1 - label_smoothing)
            - F.logsigmoid(-beta * h) * label_smoothing
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ConfigError(
            f"objective.loss_type must be one of {', '.join(LOSS_TYPES)}, got '{loss_type}'.",
            where="objective.loss_type",
        )
    chosen = beta * (policy_chosen - ref_chosen).detach()
    rejected = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen, rejected


def check(options: Any) -> tuple[float, float, str]:
    """``(beta, label_smoothing, loss_type)`` from the options, checked."""
    from plugins.objectives import preference as pref

    beta = pref.positive(options, "beta", NAME)
    smoothing = pref.in_range(options, "label_smoothing", 0.0, 0.5, NAME)
    loss_type = str(options.loss_type)
    if loss_type not in LOSS_TYPES:
        raise ConfigError(
            f"objective.loss_type must be one of {', '.join(LOSS_TYPES)}, got '{loss_type}'.",
            where="objective.loss_type",
        )
    if smoothing and loss_type != "sigmoid":
        raise ConfigError(
            f"objective.label_smoothing applies to loss_type=sigmoid only, not {loss_type}.",
            where="objective.label_smoothing",
            hint="set objective.label_smoothing=0 or objective.loss_type=sigmoid.",
        )
    return beta, smoothing, loss_type


def loss(model: Any, batch: dict[str, torch.Tensor], ctx: Any) -> torch.Tensor:
    """The DPO loss of a batch of pairs; logs rewards and log-probabilities."""
    from plugins.objectives import preference as pref

    beta, smoothing, loss_type = check(ctx.options)
    chosen, rejected = pref.policy_pair_logps(model, batch)
    ref_chosen, ref_rejected = pref.reference_pair_logps(batch, ctx)
    if loss_type == "ipo":  # IPO compares per-token log-probabilities
        args = (chosen.mean, rejected.mean, ref_chosen / chosen.tokens.clamp(min=1))
        args = (*args, ref_rejected / rejected.tokens.clamp(min=1))
    else:
        args = (chosen.logps, rejected.logps, ref_chosen, ref_rejected)
    losses, good, bad = dpo_losses(*args, beta, smoothing, loss_type)
    total = losses.mean()
    weight = float(ctx.options.sft_weight)
    if weight:
        nll = pref.chosen_nll(chosen)
        ctx.log("nll", nll.detach())
        total = total + weight * nll
    pref.log_rewards(ctx, good, bad, chosen.logps, rejected.logps)
    return total


@hookimpl
def tunesmith_provides() -> list[Objective]:
    return [
        Objective(
            NAME,
            options=OPTIONS,
            example="pair",
            batch_fields=pair_fields.PAIR_FIELDS,
            reference=True,
            packing=False,
            precomputed=pair_fields.PAIR_PRECOMPUTED,
            description="direct preference optimisation on chosen/rejected pairs "
            "(sigmoid | ipo | hinge; +NLL with sft_weight)",
        )
    ]


tunesmith_encode_example = pair_hooks.encode_pairs(NAME)
tunesmith_collate = pair_hooks.collate_pairs(NAME)


tunesmith_compute_loss = pair_hooks.compute_loss(NAME, loss)


@hookimpl
def tunesmith_precompute(
    name: str, rows: list[dict], reference: Any, pad_token_id: int, cfg: Any, options: Any
) -> list[dict] | None:
    from plugins.objectives import preference as pref

    if name != NAME or not options.precompute_ref:
        return None
    return pref.precompute_pairs(rows, reference, pad_token_id, int(cfg.data.batch_size))


@hookimpl
def tunesmith_sequence_reward(
    name: str, logps: Any, tokens: Any, ref_logps: Any, options: Any
) -> Any:
    if name != NAME or ref_logps is None:
        return None
    if str(options.loss_type) == "ipo":
        return float(options.beta) * (logps - ref_logps) / tokens.clamp(min=1)
    return float(options.beta) * (logps - ref_logps)

"""Simple preference optimisation (``objective=simpo``; Meng et al. 2024, arXiv:2405.14734).

Reference-free: the reward of an answer is its length-normalised log-probability times
``beta``, and the chosen reward must beat the rejected one by a margin ``gamma``:

    loss = -log sigmoid(beta * c - beta * r - gamma)

where ``c``, ``r`` are the per-token log-probabilities of the chosen and rejected answers.
``label_smoothing`` works as in DPO; ``sft_weight`` adds the chosen answers' NLL (CPO-style).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from framework import Objective, hookimpl
from plugins.objectives import pair_fields, pair_hooks

if TYPE_CHECKING:
    import torch

NAME = "simpo"
OPTIONS = {"beta": 2.0, "gamma": 0.5, "label_smoothing": 0.0, "sft_weight": 0.0}


def simpo_losses(
    chosen_mean: torch.Tensor,
    rejected_mean: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SimPO loss of each pair and the chosen and rejected rewards ``beta * mean logp``."""
    import torch.nn.functional as F

    z = beta * (chosen_mean - rejected_mean) - gamma
    losses = -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
    return losses, beta * chosen_mean.detach(), beta * rejected_mean.detach()


def loss(model: Any, batch: dict[str, torch.Tensor], ctx: Any) -> torch.Tensor:
    """The SimPO loss of a batch of pairs; logs rewards and log-probabilities."""
    from plugins.objectives import preference as pref

    options = ctx.options
    beta = pref.positive(options, "beta", NAME)
    smoothing = pref.in_range(options, "label_smoothing", 0.0, 0.5, NAME)
    chosen, rejected = pref.policy_pair_logps(model, batch)
    losses, good, bad = simpo_losses(
        chosen.mean, rejected.mean, beta, float(options.gamma), smoothing
    )
    total = losses.mean()
    if float(options.sft_weight):
        nll = pref.chosen_nll(chosen)
        ctx.log("nll", nll.detach())
        total = total + float(options.sft_weight) * nll
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
            packing=False,
            description="simple preference optimisation: length-normalised reward with a "
            "margin gamma (reference-free)",
        )
    ]


tunesmith_encode_example = pair_hooks.encode_pairs(NAME)
tunesmith_collate = pair_hooks.collate_pairs(NAME)


tunesmith_compute_loss = pair_hooks.compute_loss(NAME, loss)


tunesmith_sequence_reward = pair_hooks.length_normalised_reward(NAME)

"""Odds-ratio preference optimisation (``objective=orpo``; Hong et al. 2024, arXiv:2403.07691).

Reference-free: SFT on the chosen answers plus a term that raises the odds of the chosen
answer against the rejected one. With ``c``, ``r`` the length-normalised (per-token)
log-probabilities of the chosen and rejected answers and ``odds(p) = p / (1 - p)``:

    loss = NLL(chosen) - beta * mean(log sigmoid(log odds(c) - log odds(r)))

``beta`` is the paper's lambda (the weight of the odds-ratio term). The reward logged is
``beta * c`` (as TRL's ORPOTrainer logs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from framework import Objective, hookimpl
from plugins.objectives import pair_fields, pair_hooks

if TYPE_CHECKING:
    import torch

NAME = "orpo"
OPTIONS = {"beta": 0.1}


def orpo_losses(
    chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The odds-ratio term ``beta * log sigmoid(log odds ratio)`` of each pair (to be
    subtracted from the NLL), and the chosen and rejected rewards.

    Args:
        chosen_mean: per-token log-probabilities of the chosen answers, ``(n,)`` (< 0).
        rejected_mean: ... of the rejected answers.
        beta: the weight of the odds-ratio term (lambda).
    """
    import torch
    import torch.nn.functional as F

    log_odds = (chosen_mean - rejected_mean) - (
        torch.log1p(-torch.exp(chosen_mean)) - torch.log1p(-torch.exp(rejected_mean))
    )
    ratio = beta * F.logsigmoid(log_odds)
    return ratio, beta * chosen_mean.detach(), beta * rejected_mean.detach()


def loss(model: Any, batch: dict[str, torch.Tensor], ctx: Any) -> torch.Tensor:
    """The ORPO loss of a batch of pairs; logs rewards, log-probabilities, NLL, log odds."""
    from plugins.objectives import preference as pref

    beta = pref.positive(ctx.options, "beta", NAME)
    chosen, rejected = pref.policy_pair_logps(model, batch)
    ratio, good, bad = orpo_losses(chosen.mean, rejected.mean, beta)
    nll = pref.chosen_nll(chosen)
    ctx.log("nll", nll.detach())
    ctx.log("log_odds_ratio", (ratio / beta).detach().mean())
    pref.log_rewards(ctx, good, bad, chosen.logps, rejected.logps)
    return nll - ratio.mean()


@hookimpl
def tunesmith_provides() -> list[Objective]:
    return [
        Objective(
            NAME,
            options=OPTIONS,
            example="pair",
            batch_fields=pair_fields.PAIR_FIELDS,
            packing=False,
            description="odds-ratio preference optimisation: NLL on chosen + odds-ratio term "
            "(reference-free)",
        )
    ]


tunesmith_encode_example = pair_hooks.encode_pairs(NAME)
tunesmith_collate = pair_hooks.collate_pairs(NAME)


tunesmith_compute_loss = pair_hooks.compute_loss(NAME, loss)


tunesmith_sequence_reward = pair_hooks.length_normalised_reward(NAME)

"""``preference_accuracy`` and ``reward_margin``: does the model rank the chosen answer first?

On preference pairs (``data=pairs``) every answer gets the reward the trained objective
gives it (its ``tunesmith_sequence_reward`` hook): for ``dpo`` and ``kto`` the implicit reward
``beta * (log p_model - log p_base)``, for ``orpo``/``simpo`` (and objectives without a
reward, like ``sft``) the length-normalised log-probability. ``preference_accuracy`` is the
share of pairs whose chosen answer gets the higher reward (a tie counts half: the base model
of a reference objective ties every pair, 0.5); ``reward_margin`` the mean of chosen minus
rejected. On unpaired examples (``data=kto``) accuracy is the share whose reward has the
sign of its label, and the margin the mean reward of good minus bad examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from framework import Metric, hookimpl
from framework.errors import ConfigError

if TYPE_CHECKING:
    from framework.evaluate.context import EvalContext

NAMES = ("preference_accuracy", "reward_margin")


@hookimpl
def tunesmith_provides() -> list[Metric]:
    needs = ("model", "reference")
    return [
        Metric(
            "preference_accuracy",
            higher_is_better=True,
            needs=needs,
            description="share of test pairs whose chosen answer gets the higher reward (0-1)",
        ),
        Metric(
            "reward_margin",
            higher_is_better=True,
            needs=needs,
            description="mean reward of the chosen answer minus the rejected one",
        ),
    ]


def _logps(model: Any, rows: list[dict], pad_token_id: int, batch_size: int, paired: bool) -> Any:
    """Summed log-probabilities and token counts of every answer (chosen first, then rejected,
    per batch, concatenated in row order: ``(chosen, rejected)`` or ``(answers, None)``)."""
    import torch

    from framework.data.collate import pad_ids, pad_labels
    from plugins.objectives import preference as pref

    outs: list[list[torch.Tensor]] = [[], [], [], []]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                if paired:
                    batch = pref.collate_pairs(chunk, pad_token_id)
                    good, bad = pref.policy_pair_logps(model, batch)
                    parts = (good.logps, good.tokens, bad.logps, bad.tokens)
                else:
                    ids, mask = pad_ids([r["input_ids"] for r in chunk], pad_token_id)
                    labels = pad_labels([r["labels"] for r in chunk], ids.shape[1])
                    got = pref.sequence_logps(model, ids, mask, labels)
                    parts = (got.logps, got.tokens)
                for out, part in zip(outs, parts, strict=False):
                    out.append(part.float().cpu())
    finally:
        model.train(was_training)
    return [torch.cat(o) if o else None for o in outs]


def rewards(ctx: EvalContext) -> dict[str, Any]:
    """The rewards of the examples' answers for this side (computed once, kept in
    ``ctx.cache``): ``{"chosen", "rejected"}`` for pairs or ``{"rewards", "labels"}``."""
    if "preference" in ctx.cache:
        return ctx.cache["preference"]
    import torch

    from framework.train.objective import describe_objective, objective_options
    from plugins.objectives import preference as pref

    paired = [e for e in ctx.examples if "rejected" in e]
    unpaired = [e for e in ctx.examples if "label" in e and "rejected" not in e]
    if not paired and not unpaired:
        raise ConfigError(
            "preference_accuracy and reward_margin need preference data, but the examples "
            "scored have no rejected answer or label.",
            where="evaluator.metrics",
            hint="use data=pairs (prompt, chosen, rejected) or data=kto, or drop these metrics.",
        )
    cfg, tok = ctx.cfg, ctx.tokenizer
    max_length = int(cfg.data.max_length)
    batch_size = int(ctx.evaluator.get("batch_size", 8) or 8)
    if paired:
        rows = [pref.encode_pair(e, tok, max_length) for e in paired]
    else:
        rows = [pref.encode_unpaired(e, tok, max_length) for e in unpaired]
    own = _logps(ctx.model, rows, tok.pad_token_id, batch_size, bool(paired))
    plugins = ctx.plugins
    info = describe_objective(cfg, plugins) if plugins is not None else None
    ref = None
    if info is not None and info.reference:
        if ctx.base is None:  # the base side: the model is its own reference
            ref = own
        else:
            with ctx.reference() as base:
                ref = _logps(base, rows, tok.pad_token_id, batch_size, bool(paired))

    def reward(logps: Any, tokens: Any, ref_logps: Any) -> Any:
        got = None
        if info is not None:
            got = plugins.hook.tunesmith_sequence_reward(
                name=info.name,
                logps=logps,
                tokens=tokens,
                ref_logps=ref_logps,
                options=objective_options(cfg, info),
            )
        return got if got is not None else logps / tokens.clamp(min=1)

    if paired:
        out = {
            "chosen": reward(own[0], own[1], ref[0] if ref else None),
            "rejected": reward(own[2], own[3], ref[2] if ref else None),
        }
    else:
        out = {
            "rewards": reward(own[0], own[1], ref[0] if ref else None),
            "labels": torch.tensor([bool(e["label"]) for e in unpaired]),
        }
    ctx.cache["preference"] = out
    return out


def accuracy_and_margin(got: dict[str, Any]) -> tuple[float, float]:
    """``(preference_accuracy, reward_margin)`` of :func:`rewards`' result (ties count half)."""
    import torch

    if "chosen" in got:
        diff = got["chosen"] - got["rejected"]
        wins = (diff > 0).float() + 0.5 * (diff == 0).float()
        return float(wins.mean()), float(diff.mean())
    r, labels = got["rewards"], got["labels"]
    right = torch.where(labels, r > 0, r < 0).float() + 0.5 * (r == 0).float()
    good, bad = r[labels], r[~labels]
    margin = float(good.mean() - bad.mean()) if good.numel() and bad.numel() else float("nan")
    return float(right.mean()), margin


@hookimpl
def tunesmith_compute_metrics(metrics: list[str], ctx: EvalContext) -> dict[str, float] | None:
    wanted = [m for m in NAMES if m in metrics]
    if not wanted:
        return None
    accuracy, margin = accuracy_and_margin(rewards(ctx))
    values = {"preference_accuracy": accuracy, "reward_margin": margin}
    return {m: values[m] for m in wanted}

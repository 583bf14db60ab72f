"""Each preference loss, and its gradient, equals an independent computation from its paper.

The independent side runs the tiny model on one unpadded sequence at a time, sums the answer
tokens' log-probabilities in float64 with an explicit loop, and writes each paper's formula
with plain ``torch.log``/``torch.sigmoid``; the plugin side is the real hook path (encode ->
collate -> ``compute_loss`` with a :class:`LossContext`) on a padded batch. The reference is a
perturbed copy of the model, so policy and reference differ. TRL's own loss functions are
compared too when ``trl`` is installed (it is an optional test dependency: the test is
skipped without it).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from framework.train.objective import (
    LossContext,
    ReferenceModel,
    compute_loss,
    describe_objective,
    objective_options,
)
from plugins.objectives import preference as pref
from tests.conftest import compose_config
from tests.helpers import new_run

PAIRS = [
    ("2 + 3 =", "5", "6"),
    ("Name the colour of the sky.", "Blue, on a clear day.", "Green"),
    ("7 + 1 =", "8", "eighty-one, surely"),
    ("Say hi.", "Hi!", "Go away."),
]
TOL = 1e-5


def _pair_examples() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
         "rejected": r}
        for p, c, r in PAIRS
    ]  # fmt: skip


def _kto_examples() -> list[dict]:
    out = []
    for i, (p, c, r) in enumerate(PAIRS):
        good = i % 2 == 0
        answer = c if good else r
        out.append(
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer}],
             "label": good}
        )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    run_dir = tmp_path_factory.mktemp("pref") / "run"
    cfg = compose_config(["model=tiny", "method=full", "objective=dpo"], run_dir=run_dir)
    run = new_run(cfg)
    model, tokenizer = run.ensure_model()
    model.eval()  # no dropout: both sides see the same function
    reference = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return SimpleNamespace(run=run, model=model, tokenizer=tokenizer, reference=reference)


def _config(tiny, objective: str, **options: Any):
    overrides = ["model=tiny", "method=full", f"objective={objective}"]
    overrides += [f"objective.{k}={v}" for k, v in options.items()]
    return compose_config(overrides, run_dir=tiny.run.dir)


def _plugin_loss(tiny, cfg, batch) -> tuple[torch.Tensor, dict[str, float]]:
    info = describe_objective(cfg, tiny.run.plugins)
    ref = None
    if info.reference:
        ref = ReferenceModel.__new__(ReferenceModel)
        ref.uses_adapters, ref.copy = False, tiny.reference
    logged: dict[str, float] = {}
    ctx = LossContext(
        cfg=cfg,
        options=objective_options(cfg, info),
        objective=info,
        training=True,
        model=tiny.model,
        logger=lambda k, v: logged.__setitem__(k, float(v)),
        reference_model=ref,
    )
    return compute_loss(tiny.run.plugins, tiny.model, batch, cfg, ctx), logged


def _answer_logp(model: Any, prompt_ids: list[int], answer_ids: list[int]) -> tuple[Any, int]:
    """log p(answer | prompt), summed token by token in float64, and the answer's length."""
    ids = torch.tensor([prompt_ids + answer_ids])
    logits = model(input_ids=ids).logits[0].double()
    total = torch.zeros((), dtype=torch.float64)
    for k, token in enumerate(answer_ids):
        position = len(prompt_ids) + k - 1  # the logits that predict this token
        total = total + torch.log_softmax(logits[position], -1)[token]
    return total, len(answer_ids)


def _independent_pairs(tiny, model: Any) -> list[tuple[Any, int, Any, int]]:
    out = []
    for p, c, r in PAIRS:
        prompt = [{"role": "user", "content": p}]
        prompt_ids, (good, bad) = pref.prompt_and_answers(tiny.tokenizer, prompt, [c, r])
        out.append((*_answer_logp(model, prompt_ids, good), *_answer_logp(model, prompt_ids, bad)))
    return out


def _grads(model: Any, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [g.detach().clone() for g in torch.autograd.grad(loss, params, allow_unused=False)]


def _pair_batch(tiny, objective: str) -> dict[str, torch.Tensor]:
    cfg = _config(tiny, objective)
    rows = [
        tiny.run.hook.tunesmith_encode_example(name=objective, example=e, tokenizer=tiny.tokenizer,
                                               cfg=cfg)
        for e in _pair_examples()
    ]  # fmt: skip
    return tiny.run.hook.tunesmith_collate(
        name=objective, rows=rows, pad_token_id=tiny.tokenizer.pad_token_id, cfg=cfg
    )


def _check(tiny, plugin: torch.Tensor, independent: torch.Tensor) -> None:
    assert float(plugin) == pytest.approx(float(independent), abs=TOL, rel=TOL)
    mine, theirs = _grads(tiny.model, plugin), _grads(tiny.model, independent)
    worst = max(float((a - b.float()).abs().max()) for a, b in zip(mine, theirs, strict=True))
    scale = max(float(b.abs().max()) for b in theirs)
    assert scale > 0 and worst <= TOL * max(1.0, scale), (worst, scale)


def sigmoid_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.sigmoid(x))


@pytest.mark.parametrize(
    "options",
    [
        {"beta": 0.1},
        {"beta": 0.5, "label_smoothing": 0.2},
        {"beta": 0.3, "loss_type": "hinge"},
        {"beta": 0.4, "loss_type": "ipo"},
        {"beta": 0.2, "sft_weight": 0.7},
    ],
)
def test_dpo_matches_the_paper(tiny, options: dict) -> None:
    beta = options["beta"]
    ls = options.get("label_smoothing", 0.0)
    kind = options.get("loss_type", "sigmoid")
    loss, logged = _plugin_loss(tiny, _config(tiny, "dpo", **options), _pair_batch(tiny, "dpo"))
    pol, ref = _independent_pairs(tiny, tiny.model), _independent_pairs(tiny, tiny.reference)
    terms, nll_sum, nll_tokens, margins = [], 0.0, 0, []
    for (pc, nc, pr, nr), (rc, _, rr, _) in zip(pol, ref, strict=True):
        if kind == "ipo":  # Azar et al.: (h - 1/(2 beta))^2, per-token log-probs as in TRL
            h = (pc / nc - rc.detach() / nc) - (pr / nr - rr.detach() / nr)
            terms.append((h - 1 / (2 * beta)) ** 2)
        else:
            h = (pc - rc.detach()) - (pr - rr.detach())
            if kind == "hinge":
                terms.append(torch.clamp(1 - beta * h, min=0))
            else:  # Rafailov et al. eq. 7; cDPO mixes in the flipped label
                terms.append(-(1 - ls) * sigmoid_log(beta * h) - ls * sigmoid_log(-beta * h))
        margins.append(float(beta * ((pc - rc) - (pr - rr))))
        nll_sum, nll_tokens = nll_sum - pc, nll_tokens + nc
    expected = torch.stack(terms).mean()
    if options.get("sft_weight"):
        expected = expected + options["sft_weight"] * nll_sum / nll_tokens
    _check(tiny, loss, expected)
    assert logged["rewards/accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(PAIRS))
    if kind != "ipo":
        assert logged["rewards/margin"] == pytest.approx(sum(margins) / len(PAIRS), abs=1e-4)


def test_dpo_is_log_2_when_the_policy_is_the_reference(tiny) -> None:
    cfg = _config(tiny, "dpo")
    saved = tiny.reference
    tiny.reference = tiny.model
    try:
        loss, logged = _plugin_loss(tiny, cfg, _pair_batch(tiny, "dpo"))
    finally:
        tiny.reference = saved
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    assert logged["rewards/margin"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_matches_the_paper(tiny, beta: float) -> None:
    loss, _ = _plugin_loss(tiny, _config(tiny, "orpo", beta=beta), _pair_batch(tiny, "orpo"))
    terms, nll_sum, tokens = [], 0.0, 0
    for pc, nc, pr, nr in _independent_pairs(tiny, tiny.model):
        c, r = pc / nc, pr / nr  # Hong et al.: length-normalised log P(y|x)
        odds = lambda lp: torch.exp(lp) / (1 - torch.exp(lp))  # noqa: E731
        terms.append(torch.log(torch.sigmoid(torch.log(odds(c) / odds(r)))))
        nll_sum, tokens = nll_sum - pc, tokens + nc
    expected = nll_sum / tokens - beta * torch.stack(terms).mean()
    _check(tiny, loss, expected)


@pytest.mark.parametrize("options", [{"beta": 2.0, "gamma": 0.5}, {"beta": 1.0, "gamma": 1.2,
                                      "label_smoothing": 0.1, "sft_weight": 0.3}])  # fmt: skip
def test_simpo_matches_the_paper(tiny, options: dict) -> None:
    beta, gamma = options["beta"], options["gamma"]
    ls, weight = options.get("label_smoothing", 0.0), options.get("sft_weight", 0.0)
    loss, _ = _plugin_loss(tiny, _config(tiny, "simpo", **options), _pair_batch(tiny, "simpo"))
    terms, nll_sum, tokens = [], 0.0, 0
    for pc, nc, pr, nr in _independent_pairs(tiny, tiny.model):
        z = beta / nc * pc - beta / nr * pr - gamma  # Meng et al. eq. 6
        terms.append(-(1 - ls) * sigmoid_log(z) - ls * sigmoid_log(-z))
        nll_sum, tokens = nll_sum - pc, tokens + nc
    expected = torch.stack(terms).mean() + weight * nll_sum / tokens
    _check(tiny, loss, expected)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.5, 0.5)])
def test_kto_matches_the_paper(tiny, weights: tuple[float, float]) -> None:
    beta = 0.3
    cfg = _config(tiny, "kto", beta=beta, desirable_weight=weights[0],
                  undesirable_weight=weights[1])  # fmt: skip
    examples = _kto_examples()
    rows = [pref.encode_unpaired(e, tiny.tokenizer, 256) for e in examples]
    batch = tiny.run.hook.tunesmith_collate(
        name="kto", rows=rows, pad_token_id=tiny.tokenizer.pad_token_id, cfg=cfg
    )
    loss, logged = _plugin_loss(tiny, cfg, batch)

    def logp(model, i: int, j: int) -> Any:  # the prompt of example i, the completion of j
        prompt = examples[i]["messages"][:-1]
        answer = examples[j]["messages"][-1]["content"]
        prompt_ids, (ids,) = pref.prompt_and_answers(tiny.tokenizer, prompt, [answer])
        return _answer_logp(model, prompt_ids, ids)[0]

    n = len(examples)
    with torch.no_grad():  # z_ref: a batch estimate of KL(pi || ref), not differentiated
        kl = sum(logp(tiny.model, i, (i + 1) % n) - logp(tiny.reference, i, (i + 1) % n)
                 for i in range(n)) / n  # fmt: skip
    z = torch.clamp(kl, min=0)
    terms = []
    for i, e in enumerate(examples):
        h = logp(tiny.model, i, i) - logp(tiny.reference, i, i).detach()
        if e["label"]:  # Ethayarajh et al. eq. 8: lambda_D (1 - sigma(beta (h - z)))
            terms.append(weights[0] * (1 - torch.sigmoid(beta * (h - z))))
        else:
            terms.append(weights[1] * (1 - torch.sigmoid(beta * (z - h))))
    _check(tiny, loss, torch.stack(terms).mean())
    assert logged["kl"] == pytest.approx(float(z), abs=TOL)


# --------------------------------------------------------------------------- TRL


def _trl_self(**fields: Any) -> SimpleNamespace:
    defaults = {"reference_free": False, "use_weighting": False, "f_divergence_type": "reverse_kl",
                "f_divergence_params": {}, "aux_loss_enabled": False, "device": "cpu",
                "accelerator": SimpleNamespace(gather_for_metrics=lambda x: x,
                                               gather=lambda x: x),
                "label_pad_token_id": -100}  # fmt: skip
    return SimpleNamespace(**{**defaults, **fields})


def _random_logps(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.05) for _ in range(4)]


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_matches_trl(loss_type: str) -> None:
    trl = pytest.importorskip("trl")
    from plugins.objectives.dpo import dpo_losses

    pc, pr, rc, rr = _random_logps()
    me, _, _ = dpo_losses(pc, pr, rc, rr, 0.3, 0.1 if loss_type == "sigmoid" else 0.0, loss_type)
    fake = _trl_self(beta=0.3, label_smoothing=0.1 if loss_type == "sigmoid" else 0.0,
                     loss_type=loss_type)  # fmt: skip
    try:
        theirs = trl.DPOTrainer.dpo_loss(fake, pc, pr, rc, rr)[0]
    except (TypeError, AttributeError) as exc:  # TRL's private signature changed
        pytest.skip(f"this trl version's DPOTrainer.dpo_loss differs: {exc}")
    assert torch.allclose(me, theirs, atol=TOL)


def test_kto_matches_trl() -> None:
    trl = pytest.importorskip("trl")
    from plugins.objectives.kto import kto_losses

    pol, ref, kl_pol, kl_ref = _random_logps(8, seed=1)
    labels = torch.tensor([True, False] * 4)
    me, _, _ = kto_losses(pol, ref, labels, kl_pol, kl_ref, 0.2, 1.3, 0.7)
    fake = _trl_self(beta=0.2, desirable_weight=1.3, undesirable_weight=0.7, loss_type="kto")
    try:
        out = trl.KTOTrainer.kto_loss(
            fake, pol[labels], pol[~labels], kl_pol, ref[labels], ref[~labels], kl_ref
        )
    except (TypeError, AttributeError) as exc:
        pytest.skip(f"this trl version's KTOTrainer.kto_loss differs: {exc}")
    assert float(me.mean()) == pytest.approx(float(out[0].mean()), abs=TOL)


def test_orpo_and_simpo_match_trl() -> None:
    trl = pytest.importorskip("trl")
    from plugins.objectives.orpo import orpo_losses
    from plugins.objectives.simpo import simpo_losses

    c, r = (x / 10 for x in _random_logps(seed=2)[:2])
    try:
        theirs = trl.ORPOTrainer.odds_ratio_loss(_trl_self(beta=0.4), c, r)[0]
        simpo = trl.CPOTrainer.cpo_loss(
            _trl_self(beta=2.0, simpo_gamma=0.5, label_smoothing=0.0, loss_type="simpo"), c, r
        )[0]
    except (TypeError, AttributeError) as exc:
        pytest.skip(f"this trl version's ORPO/CPO loss functions differ: {exc}")
    assert torch.allclose(orpo_losses(c, r, 0.4)[0], theirs, atol=TOL)
    assert torch.allclose(simpo_losses(c, r, 2.0, 0.5)[0], simpo, atol=TOL)

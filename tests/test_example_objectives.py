"""The example package's objectives, installed with pip and used like a user would.

``sft_label_smoothing`` shows an objective with options (``objective.label_smoothing=0.2``);
``pairwise_dpo`` a pairwise objective: its own batch fields and collate hook, a reference
model (the base under LoRA, a frozen copy under full fine-tuning), extra logged values.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli

OBJECTIVES = "tunesmith_example.objectives"


def write_pairs(path: Path) -> Path:
    """40 preference pairs: the right sum is chosen, a wrong one rejected."""
    rows = [
        {"prompt": f"{a} + {b} =", "chosen": str(a + b), "rejected": str(a + b + 1)}
        for a in range(1, 9)
        for b in range(1, 6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _logged(run_dir: Path) -> list[dict[str, str]]:
    (path,) = run_dir.glob("logs/**/metrics.csv")
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def test_label_smoothing_is_an_option_that_changes_the_loss(
    on_path: Path, make_cfg, alpaca_file: Path
) -> None:
    from framework.data.datamodule import Collator
    from framework.data.prepare import prepare
    from framework.train.objective import compute_loss
    from tests.helpers import encoded, new_run

    def cfg(*overrides: str):
        return make_cfg(
            "model=tiny", "data=alpaca", f"data.path={alpaca_file}", f"plugins=[{OBJECTIVES}]",
            *overrides,
        )  # fmt: skip

    smoothed = cfg("objective=sft_label_smoothing", "objective.label_smoothing=0.2")
    assert smoothed.objective.label_smoothing == 0.2
    assert cfg("objective=sft_label_smoothing").objective.label_smoothing == 0.1  # its yaml
    run = new_run(cfg())
    run.dir.mkdir(parents=True, exist_ok=True)
    prepare(run)
    model, tokenizer = run.ensure_model()
    batch = Collator(tokenizer.pad_token_id)(encoded(run)[:8])  # one batch, every loss
    model.eval()

    def loss(config) -> float:
        return float(compute_loss(run.plugins, model, batch, config))

    plain = loss(cfg())
    assert loss(cfg("objective=sft_label_smoothing", "objective.label_smoothing=0")) == (
        pytest.approx(plain, rel=1e-5)
    )
    assert abs(loss(smoothed) - plain) > 1e-3
    assert loss(smoothed) != pytest.approx(loss(cfg("objective=sft_label_smoothing")))


def test_label_smoothing_trains_and_a_misspelled_option_is_named(
    installed: Path, tmp_path: Path, alpaca_file: Path
) -> None:
    env = {"TUNESMITH_OUTPUT": str(tmp_path), "PYTHONPATH": str(installed)}
    common = (*TINY, "data=alpaca", f"data.path={alpaca_file}", "objective=sft_label_smoothing")
    proc = run_cli(*common, "objective.label_smothing=0.2", env=env)
    assert proc.returncode != 0
    assert "Unknown config key 'objective.label_smothing'" in proc.stderr
    assert "Did you mean 'objective.label_smoothing'?" in proc.stderr
    assert not (tmp_path / "runs").exists()

    proc = run_cli(
        *common, "objective.label_smoothing=0.2", "stages=[prepare,train]", "trainer.max_steps=2",
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    saved = (run / "config.yaml").read_text(encoding="utf-8")
    assert "name: sft_label_smoothing" in saved and "label_smoothing: 0.2" in saved
    assert json.loads((run / "train_summary.json").read_text())["status"] == "finished"
    assert len(_series(_logged(run), "train/loss")) == 2


def test_dpo_trains_with_lora_against_the_base_and_logs_rewards(
    installed: Path, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    proc = run_cli(
        *TINY,
        "data=pairs",
        f"data.path={pairs}",
        "objective=pairwise_dpo",
        "objective.beta=0.5",
        "method=lora",
        "stages=[prepare,train]",
        "trainer.val_check_interval=2",
        "optim.lr=2e-2",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out"), "PYTHONPATH": str(installed)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "out" / "runs").iterdir())
    rows = _logged(run)
    losses = _series(rows, "train/loss")
    assert [s for s, _ in losses] == [0, 1, 2, 3]
    # step 0: LoRA starts as the identity, so policy == reference (the base with the
    # adapters off) and every pair's margin is 0: loss = -log sigmoid(0) = log 2
    assert losses[0][1] == pytest.approx(math.log(2), abs=1e-5)
    assert _series(rows, "train/rewards/margin")[0][1] == pytest.approx(0.0, abs=1e-6)
    # later the policy has left the reference: the reference is not the trained model
    assert any(abs(v - math.log(2)) > 1e-4 for _, v in losses[1:])
    assert any(abs(v) > 1e-6 for _, v in _series(rows, "train/rewards/chosen")[1:])
    for key in ("train/rewards/accuracy", "train/rewards/rejected"):
        assert len(_series(rows, key)) == 4, key
    for key in ("val/loss", "val/rewards/accuracy", "val/rewards/margin"):
        assert len(_series(rows, key)) == 2, key  # validated every 2 steps
    # the validation callback skipped the pair batches instead of crashing
    assert not _series(rows, "val/perplexity")
    assert json.loads((run / "train_summary.json").read_text())["status"] == "finished"


def test_dpo_with_full_fine_tuning_compares_against_a_frozen_copy(
    on_path: Path, make_cfg, tmp_path: Path, monkeypatch
) -> None:
    import torch

    import framework.train.module as module_mod
    from tests.helpers import fit

    built: list = []

    class Recording(module_mod.FineTuneModule):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(module_mod, "FineTuneModule", Recording)
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    run = fit(
        make_cfg(
            *TINY,
            "data=pairs",
            f"data.path={pairs}",
            f"plugins=[{OBJECTIVES}]",
            "objective=pairwise_dpo",
            "method=full",
            "trainer.max_steps=3",
            "optim.lr=1e-2",
        )
    )
    (module,) = built
    reference = module.reference.copy
    assert reference is not None and reference is not module.model
    assert not reference.training
    assert all(not p.requires_grad for p in reference.parameters())

    fresh, _ = run.build_base()
    start = dict(fresh.named_parameters())
    trained = dict(module.model.named_parameters())
    for name, p in reference.named_parameters():
        assert torch.equal(p, start[name]), f"the reference changed: {name}"
    assert any(not torch.equal(trained[n], start[n]) for n in start), "nothing trained"

    # not a submodule: neither among the trained parameters nor in checkpoints
    ids = {id(p) for p in module.parameters()}
    assert not any(id(p) in ids for p in reference.parameters())
    assert set(module.state_dict()) == {f"model.{k}" for k in module.model.state_dict()}
    ckpt = torch.load(run.dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert len(ckpt["state_dict"]) == len(module.model.state_dict())

    losses = _series(_logged(run.dir), "train/loss")
    assert losses[0][1] == pytest.approx(math.log(2), abs=1e-5)  # the copy is the start

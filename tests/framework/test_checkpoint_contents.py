"""What a training checkpoint holds, per method kind, and that every kind resumes exactly.

Adapter and partial methods (``Method(kind="adapter"|"partial")``) checkpoint only their
trainable weights and buffers, not the frozen base; ``kind="full"`` checkpoints the whole
model. Each resumes from an interruption with the same losses and weights as a run that was
never stopped; a whole checkpoint written by an older tunesmith still loads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from framework.errors import TunesmithError
from framework.pipeline import run_pipeline
from framework.stops import RunInterrupted
from framework.train import checkpointing
from framework.train.checkpointing import (
    TRAINABLE_ONLY,
    check_trainable_only,
    drop_frozen_weights,
    saves_trainable_only,
)
from tests.conftest import compose_config
from tests.helpers import loss_rows

TEST_PLUGIN = "plugins=[tests.framework.reliability_plugins]"


def _overrides(alpaca_file: Path, *extra: str) -> list[str]:
    # 32 training examples in batches of 8: 4 steps per epoch
    return [
        "model=tiny",
        "trainer.max_epochs=-1",
        "trainer.max_steps=5",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "data=alpaca",
        f"data.path={alpaca_file}",
        "data.batch_size=8",
        "stages=[prepare,train]",
        TEST_PLUGIN,
        *extra,
    ]


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _interrupt_then_resume(
    cfg_args: list[str], run_dir: Path, monkeypatch, caplog, at: int = 3
) -> None:
    """Ctrl-C while step ``at`` runs (mid-epoch 0), then the same command again."""
    monkeypatch.setenv("TS_TEST_SIGNAL", "SIGINT")
    monkeypatch.setenv("TS_TEST_SIGNAL_AT", str(at))
    with pytest.raises(RunInterrupted):
        run_pipeline(compose_config(cfg_args, run_dir=run_dir))
    monkeypatch.delenv("TS_TEST_SIGNAL_AT")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_pipeline(compose_config(cfg_args, run_dir=run_dir))
    assert f"at step {at} (epoch 0, batch {at})" in caplog.text  # resumed, not restarted


def _assert_same_training(resumed: Path, reference: Path) -> None:
    assert loss_rows(resumed) == loss_rows(reference)
    assert [step for step, _ in loss_rows(resumed)] == list(range(5))
    ours, theirs = _checkpoint(resumed), _checkpoint(reference)
    assert ours["global_step"] == theirs["global_step"] == 5
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for name, value in ours["state_dict"].items():
        assert torch.equal(value, theirs["state_dict"][name]), name


# --------------------------------------------------------------------------- per method kind


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "trainable_only"),
    [
        ("method=lora", True),  # kind="adapter"
        ("method=freeze method.last_n_layers=1", True),  # kind="partial"
        ("method=full", False),  # kind="full": unchanged, the whole model
    ],
)
def test_checkpoints_hold_what_trains_and_resume_exactly(
    tmp_path: Path,
    alpaca_file: Path,
    monkeypatch,
    caplog,
    method: str,
    trainable_only: bool,
) -> None:
    args = _overrides(alpaca_file, *method.split())
    reference = tmp_path / "reference"
    run_pipeline(compose_config(args, run_dir=reference))
    checkpoint = _checkpoint(reference)
    saved = set(checkpoint["state_dict"])

    from framework.manager import build_plugin_manager
    from framework.run import Run

    cfg = compose_config(args, run_dir=tmp_path / "fresh")
    run = Run(cfg=cfg, dir=tmp_path / "fresh", plugins=build_plugin_manager())
    base, _ = run.build_base()
    model = run.hook.tunesmith_apply_method(name=str(cfg.method.name), model=base, cfg=cfg)
    everything = {f"model.{k}" for k in model.state_dict()}
    trainable = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}

    if trainable_only:
        assert saved == trainable  # the tiny model has no persistent buffers
        assert saved < everything
        assert checkpoint[TRAINABLE_ONLY]["frozen_left_out"] == len(everything - saved)
    else:
        assert saved == everything
        assert TRAINABLE_ONLY not in checkpoint
    # what a resume needs besides the weights is all there
    for key in ("optimizer_states", "lr_schedulers", "loops", "tunesmith"):
        assert checkpoint[key], key

    resumed = tmp_path / "resumed"
    _interrupt_then_resume(args, resumed, monkeypatch, caplog)
    _assert_same_training(resumed, reference)


@pytest.mark.slow
def test_qlora_checkpoints_hold_the_adapter_only_and_resume_exactly(
    tmp_path: Path, alpaca_file: Path, monkeypatch, caplog
) -> None:
    pytest.importorskip("bitsandbytes")
    args = _overrides(alpaca_file, "method=qlora", "method.gradient_checkpointing=false")
    reference = tmp_path / "reference"
    run_pipeline(compose_config(args, run_dir=reference))
    saved = _checkpoint(reference)["state_dict"]
    assert saved and all("lora_" in key for key in saved), sorted(saved)[:5]
    assert not any(key.endswith((".absmax", ".quant_map", "quant_state.bitsandbytes__nf4"))
                   for key in saved)  # fmt: skip

    resumed = tmp_path / "resumed"
    _interrupt_then_resume(args, resumed, monkeypatch, caplog)
    _assert_same_training(resumed, reference)


def test_a_whole_checkpoint_of_an_older_tunesmith_still_resumes(
    tmp_path: Path, alpaca_file: Path, monkeypatch, caplog
) -> None:
    args = _overrides(alpaca_file)  # method=lora
    reference = tmp_path / "reference"
    run_pipeline(compose_config(args, run_dir=reference))

    # The interrupted attempt writes checkpoints as tunesmith did before: the whole model.
    run_dir = tmp_path / "run"
    monkeypatch.setattr(checkpointing, "FROZEN_BASE_KINDS", frozenset())
    monkeypatch.setenv("TS_TEST_SIGNAL", "SIGINT")
    monkeypatch.setenv("TS_TEST_SIGNAL_AT", "3")
    with pytest.raises(RunInterrupted):
        run_pipeline(compose_config(args, run_dir=run_dir))
    old = _checkpoint(run_dir)
    assert TRAINABLE_ONLY not in old and any("lora_" not in k for k in old["state_dict"])

    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        run_pipeline(compose_config(args, run_dir=run_dir))
    assert "Resumed from" in caplog.text and "at step 3" in caplog.text
    _assert_same_training(run_dir, reference)
    assert TRAINABLE_ONLY in _checkpoint(run_dir)  # saved the new way from then on


# --------------------------------------------------------------------------- units


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.adapter = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)  # persistent buffers: running statistics
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.embed.weight.requires_grad_(False)
        self.norm.weight.requires_grad_(False)
        self.norm.bias.requires_grad_(False)


def test_drop_frozen_weights_keeps_trainable_weights_and_buffers() -> None:
    module = _Tiny()
    checkpoint = {"state_dict": module.state_dict(), "global_step": 3}
    drop_frozen_weights(checkpoint, module, "adapter")
    assert set(checkpoint["state_dict"]) == {
        "adapter.weight",
        "adapter.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    }
    assert checkpoint[TRAINABLE_ONLY] == {"method_kind": "adapter", "frozen_left_out": 4}
    assert check_trainable_only(checkpoint, _Tiny()) is True
    # a tied weight that trains is kept under each of its names
    module.embed.weight.requires_grad_(True)
    checkpoint = {"state_dict": module.state_dict()}
    drop_frozen_weights(checkpoint, module, "partial")
    assert {"embed.weight", "head.weight"} <= set(checkpoint["state_dict"])


def test_a_trainable_only_checkpoint_that_does_not_fit_is_refused() -> None:
    module = _Tiny()
    checkpoint = {"state_dict": module.state_dict()}
    drop_frozen_weights(checkpoint, module, "adapter")
    del checkpoint["state_dict"]["adapter.bias"]
    with pytest.raises(TunesmithError, match=r"lacks 1 trainable one\(s\) \['adapter.bias'\]"):
        check_trainable_only(checkpoint, _Tiny())
    checkpoint["state_dict"]["adapter.bias"] = torch.zeros(4)
    checkpoint["state_dict"]["lora_A.weight"] = torch.zeros(4)
    with pytest.raises(TunesmithError, match="another method or model"):
        check_trainable_only(checkpoint, _Tiny())
    # a whole checkpoint (no mark): loaded strictly by Lightning, as before
    assert check_trainable_only({"state_dict": _Tiny().state_dict()}, _Tiny()) is False


def test_only_adapter_and_partial_kinds_leave_the_base_out() -> None:
    class FSDPStrategy:  # a sharding strategy saves in its own format
        pass

    assert saves_trainable_only("adapter") and saves_trainable_only("partial")
    assert not saves_trainable_only("full")
    assert not saves_trainable_only("adapter", FSDPStrategy())

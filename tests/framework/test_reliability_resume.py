"""Interrupted runs resume exactly; finished runs are kept; NaN stops training cleanly.

The kill-and-resume test runs the real CLI in a subprocess, stops it with SIGTERM, then
with SIGKILL, and checks that the third attempt ends with the same weights and loss as an
uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framework.pipeline import run_pipeline
from framework.stops import RunInterrupted, TrainingDiverged
from tests.conftest import ROOT_DIR, compose_config
from tests.helpers import loss_rows

TEST_PLUGIN = "plugins=[tests.framework.reliability_plugins]"


def _overrides(alpaca_file: Path, *extra: str) -> list[str]:
    # 32 training examples in batches of 8: 4 steps per epoch, so the run crosses epochs.
    return [
        "model=tiny",
        "trainer.max_epochs=-1",  # the step budget (max_steps) ends these runs
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "data=alpaca",
        f"data.path={alpaca_file}",
        "data.batch_size=8",
        "stages=[prepare,train]",
        TEST_PLUGIN,
        # the demo's fast learning rate (method=lora would start at 2e-4) unless a test sets one
        *([] if any(e.startswith("optim.lr=") for e in extra) else ["optim.lr=2e-3"]),
        *extra,
    ]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "artifact" / "adapter_model.safetensors")


def _last_loss(run_dir: Path) -> tuple[int, float]:
    return loss_rows(run_dir)[-1]


def _note(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "last.json").read_text())


def _wait_for_step(proc: subprocess.Popen, progress: Path, step: int, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if progress.exists() and int(progress.read_text() or 0) >= step:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("training did not reach step {step} in time")


def test_sigterm_then_sigkill_then_rerun_ends_like_an_uninterrupted_run(
    tmp_path: Path, alpaca_file: Path
) -> None:
    args = _overrides(
        alpaca_file,
        "trainer.max_steps=8",
        "trainer.max_epochs=3",
        "callbacks.model_checkpoint.every_n_train_steps=3",
    )
    progress = tmp_path / "progress.txt"
    env = {
        **os.environ,
        "TUNESMITH_OUTPUT": str(tmp_path / "out"),
        "TS_TEST_PROGRESS": str(progress),
        "TS_TEST_STEP_SLEEP": "0.3",
    }

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        with log.open("w") as f:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT_DIR / "run.py"), *args],
                cwd=ROOT_DIR,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        return proc, log

    # 1. SIGTERM while step 3 runs: the step finishes, last.ckpt is saved at step 3, exit 143.
    proc, log = start("first")
    _wait_for_step(proc, progress, 2, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    first = log.read_text()
    assert "Training was interrupted by SIGTERM at step 3 of 8" in first
    assert "re-run the same command to continue from step 3" in first
    assert "Traceback" not in first
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    assert _note(run_dir)["step"] == 3
    assert json.loads((run_dir / "run_state.json").read_text())["status"] == "interrupted"

    # 2. The same command resumes at step 3 (mid-epoch 0); SIGKILL during step 8 loses
    #    only what came after the step-6 checkpoint (every 3 steps).
    proc, log = start("second")
    _wait_for_step(proc, progress, 7, log)
    proc.kill()
    proc.wait(timeout=60)
    assert "at step 3 (epoch 0, batch 3)" in log.read_text()
    assert _note(run_dir)["step"] == 6
    # The checkpoint the killed run left holds the LoRA weights, not the frozen base.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all("lora_" in k for k in checkpoint["state_dict"])
    assert checkpoint["optimizer_states"] and checkpoint["loops"]
    adapter = sum(t.numel() * t.element_size() for t in checkpoint["state_dict"].values())
    # the adapter, its two AdamW moments and the bookkeeping (~0.2 MB here); with the tiny
    # base model's ~0.5 MB of frozen weights it would be over this bound
    assert checkpoint["tunesmith_trainable_only"]["frozen_left_out"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_size < 4 * adapter + 200_000

    # 3. Again: resumes at step 6 (mid-epoch 1) and finishes.
    proc, log = start("third")
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    third = log.read_text()
    assert re.search(r"Resumed from \S+last\.ckpt at step 6 \(epoch 1, batch 2\)", third)
    assert json.loads((run_dir / "run_state.json").read_text())["status"] == "finished"

    # The same result as a run that was never interrupted.
    reference = tmp_path / "reference"
    run_pipeline(compose_config(args, run_dir=reference))
    resumed, uninterrupted = _weights(run_dir), _weights(reference)
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=1e-6, rtol=1e-5)
    step, loss = _last_loss(run_dir)
    ref_step, ref_loss = _last_loss(reference)
    assert step == ref_step == 7
    assert math.isclose(loss, ref_loss, rel_tol=1e-5)


def test_ctrl_c_saves_the_step_and_the_rerun_is_bit_identical(
    tmp_path: Path, alpaca_file: Path, monkeypatch, caplog
) -> None:
    args = _overrides(alpaca_file, "trainer.max_steps=6", "trainer.max_epochs=2")
    reference = tmp_path / "reference"
    run_pipeline(compose_config(args, run_dir=reference))

    run_dir = tmp_path / "run"
    monkeypatch.setenv("TS_TEST_SIGNAL", "SIGINT")
    monkeypatch.setenv("TS_TEST_SIGNAL_AT", "5")  # Ctrl-C while step 5 (epoch 1) runs
    with pytest.raises(RunInterrupted) as err:
        run_pipeline(compose_config(args, run_dir=run_dir))
    assert err.value.exit_code == 130
    assert "interrupted by Ctrl-C (SIGINT) at step 5 of 6 (epoch 1)" in err.value.format()
    assert _note(run_dir)["step"] == 5
    assert not (run_dir / "artifact").exists()  # an interrupted run saves no model

    monkeypatch.delenv("TS_TEST_SIGNAL_AT")
    with caplog.at_level(logging.INFO):
        run_pipeline(compose_config(args, run_dir=run_dir))
    assert "at step 5 (epoch 1, batch 1)" in caplog.text
    resumed, uninterrupted = _weights(run_dir), _weights(reference)
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C as usual again
    # the loss curve keeps the steps before the interruption, each once
    assert loss_rows(run_dir) == loss_rows(reference)
    assert [step for step, _ in loss_rows(run_dir)] == list(range(6))


# --------------------------------------------------------------------------- finished runs


def test_a_finished_run_is_kept_and_a_larger_budget_extends_it(
    tmp_path: Path, alpaca_file: Path, caplog
) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_config(_overrides(alpaca_file, "trainer.max_steps=3"), run_dir=run_dir)
    run_pipeline(cfg)
    weights = _weights(run_dir)
    stamp = (run_dir / "artifact").stat().st_mtime_ns

    # The same command again: nothing is redone, and the user is told what they can do.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_pipeline(cfg)
    assert "This run is already finished after 3 training steps" in caplog.text
    for how in ("run_name=", "trainer.max_steps=N", "force=true"):
        assert how in caplog.text
    assert (run_dir / "artifact").stat().st_mtime_ns == stamp

    # A smaller budget: nothing to do either.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_pipeline(
            compose_config(_overrides(alpaca_file, "trainer.max_steps=2"), run_dir=run_dir)
        )
    assert "does not go beyond what it already trained" in caplog.text

    # A larger budget continues from the last checkpoint.
    caplog.clear()
    more = compose_config(_overrides(alpaca_file, "trainer.max_steps=5"), run_dir=run_dir)
    with caplog.at_level(logging.INFO):
        run_pipeline(more)
    assert "Extending the finished run" in caplog.text
    assert re.search(r"Resumed from \S+ at step 3 ", caplog.text)
    assert _note(run_dir)["step"] == 5
    # The new steps follow the longer schedule from their first one: cosine over 5 steps at
    # step 3, not the old schedule's final rate (0 once a cosine over 3 steps has ended).
    with (run_dir / "logs" / "metrics.csv").open(encoding="utf-8") as f:
        lrs = {int(r["step"]): float(r["train/lr"]) for r in csv.DictReader(f) if r["train/lr"]}
    assert lrs[3] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 5)), rel=1e-4)
    assert not torch.equal(_weights(run_dir)["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"],
                           weights["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])  # fmt: skip

    # Any other change is refused: the finished run stays as it is.
    other = compose_config(
        _overrides(alpaca_file, "trainer.max_steps=5", "optim.lr=1e-4"), run_dir=run_dir
    )
    with pytest.raises(Exception) as err:
        run_pipeline(other)
    assert "finished run made with a different config (changed: optim.lr)" in str(err.value)
    assert "Nothing was overwritten" in str(err.value)

    # force=true starts over in place, from step 0.
    caplog.clear()
    forced = compose_config(
        _overrides(alpaca_file, "trainer.max_steps=2", "optim.lr=1e-4", "force=true"),
        run_dir=run_dir,
    )
    with caplog.at_level(logging.INFO):
        run_pipeline(forced)
    assert "Resumed" not in caplog.text
    assert _note(run_dir)["step"] == 2


# --------------------------------------------------------------------------- divergence


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, alpaca_file: Path, monkeypatch
) -> None:
    from tests.framework import reliability_plugins

    monkeypatch.setenv("TS_TEST_NAN_AT_STEP", "3")
    monkeypatch.setitem(reliability_plugins._calls, "train", 0)
    run_dir = tmp_path / "run"
    cfg = compose_config(
        _overrides(
            alpaca_file,
            "objective.name=sft_nan",  # a plugin objective without a config file
            "trainer.max_steps=6",
            "callbacks.model_checkpoint.every_n_train_steps=2",
        ),
        run_dir=run_dir,
    )
    with pytest.raises(TrainingDiverged) as err:
        run_pipeline(cfg)
    text = err.value.format()
    assert "the training loss became nan at step 3" in text
    assert "no optimizer step was taken with it" in text
    assert (
        f"The last good checkpoint is kept: {run_dir / 'checkpoints' / 'last.ckpt'} (step 2)"
        in text
    )
    for advice in ("optim.lr=0.002; try a tenth", "trainer.gradient_clip_val", "data/rejects"):
        assert advice in text
    assert err.value.exit_code == 3

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    state = json.loads((run_dir / "run_state.json").read_text())
    assert state["status"] == "failed" and "TrainingDiverged" in state["error"]
    assert not (run_dir / "artifact").exists()

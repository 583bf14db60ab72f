"""Preference objectives through the CLI and the train stage: train, evaluate (base vs tuned),
export, sweeps over ``objective.beta``, reference values precomputed once, and a run killed
with SIGKILL that resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT_DIR, TINY, compose_config, run_cli


def write_pairs(path: Path) -> Path:
    """40 pairs: the right sum chosen, a wrong one rejected."""
    rows = [
        {"prompt": f"{a} + {b} =", "chosen": str(a + b), "rejected": str(a + b + 1)}
        for a in range(1, 9)
        for b in range(1, 6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_feedback(path: Path) -> Path:
    """40 unpaired examples: right sums desirable, wrong ones not."""
    rows = [
        {
            "prompt": f"{a} + {b} =",
            "completion": str(a + b + (a + b) % 2),
            "label": (a + b) % 2 == 0,
        }
        for a in range(1, 9)
        for b in range(1, 6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def logged(run_dir: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(run_dir.glob("logs/**/metrics.csv")):
        with path.open(encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    return rows


def series(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


PREF_METRICS = "evaluator.metrics=[preference_accuracy,reward_margin,exact_match]"
SIGNALS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
           "logps/chosen", "logps/rejected")  # fmt: skip


@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo", "kto"])
def test_each_objective_trains_evaluates_and_exports(tmp_path: Path, objective: str) -> None:
    data = (
        # "1 + 2 = 4" (undesirable) and "2 + 2 = 4" (desirable) differ by one character:
        # near-duplicates by text, but not for KTO; keep them all (both labels in val)
        (
            "data=kto",
            f"data.path={write_feedback(tmp_path / 'kto.jsonl')}",
            "data.clean.near_dedup=false",
            "data.split.val=0.2",  # 8 examples each: both labels in val and in the 4 scored
            "data.split.test=0.2",
        )
        if objective == "kto"
        else ("data=pairs", f"data.path={write_pairs(tmp_path / 'pairs.jsonl')}")
    )
    proc = run_cli(
        *TINY, *data, f"objective={objective}", PREF_METRICS, "optim.lr=1e-2",
        "trainer.val_check_interval=2",
        f"evaluator.max_samples={8 if objective == 'kto' else 4}",  # kto: both labels scored
        "export.formats=[adapter,merged]",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "out" / "runs").iterdir()
    rows = logged(run)
    assert len(series(rows, "train/loss")) == 4
    for key in SIGNALS:  # KTO batches may lack one side: logged when the batch has it
        assert series(rows, f"train/{key}") or objective == "kto", key
        assert series(rows, f"val/{key}") or objective == "kto", key
    assert series(rows, "train/rewards/accuracy") and series(rows, "val/rewards/margin")
    metrics = json.loads((run / "metrics.json").read_text())
    for side in ("base", "tuned"):
        assert 0.0 <= metrics[side]["preference_accuracy"] <= 1.0
        assert math.isfinite(metrics[side]["reward_margin"])
    assert metrics["directions"]["preference_accuracy"] == "higher"
    if objective in ("dpo", "kto"):  # the base is its own reference: every reward is 0
        assert metrics["base"]["preference_accuracy"] == 0.5
        assert metrics["base"]["reward_margin"] == 0.0
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "export" / "adapter" / "adapter_config.json").is_file()
    assert (run / "export" / "merged" / "config.json").is_file()


def test_plugins_lists_the_objectives_with_their_options() -> None:
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("dpo", "orpo", "simpo", "kto", "preference_accuracy", "reward_margin"):
        assert name in proc.stdout
    for option in ("label_smoothing", "loss_type", "sft_weight", "precompute_ref", "gamma",
                   "desirable_weight"):  # fmt: skip
        assert option in proc.stdout


def test_a_sweep_over_beta_runs_two_jobs(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    proc = run_cli(
        "-m", "experiment=smoke", "data=pairs", f"data.path={pairs}", "objective=dpo",
        "objective.beta=0.1,0.5", "stages=[prepare,train,evaluate]",
        "evaluator.metrics=[preference_accuracy,reward_margin]", "trainer.max_steps=2",
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = [p for p in (tmp_path / "multirun").iterdir() if p.is_dir()]
    jobs = [json.loads(p.read_text()) for p in sweep.glob("*/job.json")]
    assert sorted(j["status"] for j in jobs) == ["finished", "finished"]
    betas = sorted(
        json.loads(json.dumps(__import__("yaml").safe_load((Path(j["dir"]) / "config.yaml").read_text())))["objective"]["beta"]
        for j in jobs
    )  # fmt: skip
    assert betas == [0.1, 0.5]
    with (sweep / "sweep_summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2


def _fit_losses(tmp_path: Path, name: str, *overrides: str):
    from tests.helpers import fit

    cfg = compose_config(
        [*TINY, "stages=[prepare,train]", "method=full", *overrides,
         f"paths.cache_dir={tmp_path / 'cache'}"],
        run_dir=tmp_path / name,
    )  # fmt: skip
    run = fit(cfg)
    return run, series(logged(run.dir), "train/loss")


def test_precompute_ref_trains_like_a_frozen_copy_without_keeping_one(
    tmp_path: Path, monkeypatch
) -> None:
    import framework.train.module as module_mod

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    common = ("data=pairs", f"data.path={pairs}", "objective=dpo", "optim.lr=1e-3")
    references: list = []
    original = module_mod.FineTuneModule.__init__

    def spy(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        references.append(self.reference)

    monkeypatch.setattr(module_mod.FineTuneModule, "__init__", spy)
    _, copied = _fit_losses(tmp_path, "copy", *common)
    run, pre = _fit_losses(tmp_path, "pre", *common, "objective.precompute_ref=true")
    assert references[0] is not None and references[0].copy is not None
    assert references[1] is None  # no second model in memory
    assert [s for s, _ in pre] == [s for s, _ in copied] == [0, 1, 2, 3]
    for (_, a), (_, b) in zip(pre, copied, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    stored = sorted(p.name.split("-")[0] for p in (run.dir / "data" / "precomputed").iterdir())
    assert stored == ["train", "val"]
    # a later run on the same data and model reads them from the cache instead
    cached = list((tmp_path / "cache" / "data" / "encoded").glob("pre-*.npz"))
    assert len(cached) == 2


def test_kto_with_precomputed_reference_trains(tmp_path: Path) -> None:
    feedback = write_feedback(tmp_path / "kto.jsonl")
    run, losses = _fit_losses(
        tmp_path, "kto", "data=kto", f"data.path={feedback}", "objective=kto",
        "objective.precompute_ref=true",
    )  # fmt: skip
    assert len(losses) == 4 and all(math.isfinite(v) for _, v in losses)
    assert losses[0][1] == pytest.approx(0.5, abs=1e-5)  # 1 - sigmoid(0) at the start
    assert (run.dir / "data" / "precomputed").is_dir()


# --------------------------------------------------------------------------- kill -9


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted((run_dir / "artifact").glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("method=full", "objective.precompute_ref=true")])
def test_sigkill_then_rerun_ends_like_an_uninterrupted_run(tmp_path: Path, extra) -> None:
    from framework.pipeline import run_pipeline

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    args = [
        "model=tiny", "trainer.max_epochs=-1", "trainer.precision=32-true",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data=pairs",
        f"data.path={pairs}", "data.batch_size=8", "objective=dpo", "optim.lr=1e-2",
        "stages=[prepare,train]", "plugins=[tests.framework.reliability_plugins]",
        "trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=2",
        f"paths.cache_dir={tmp_path / 'cache'}", *extra,
    ]  # fmt: skip
    progress = tmp_path / "progress.txt"
    env = {**os.environ, "TUNESMITH_OUTPUT": str(tmp_path / "out"),
           "TS_TEST_PROGRESS": str(progress), "TS_TEST_STEP_SLEEP": "0.3"}  # fmt: skip

    # Fill the caches first: the tiny model's first build draws from torch's RNG, so a run
    # that builds it starts its LoRA elsewhere than one that loads it.
    run_pipeline(compose_config([*args, "stages=[prepare]"], run_dir=tmp_path / "warm"))
    reference = tmp_path / "reference"
    run_pipeline(compose_config(args, run_dir=reference))

    log = tmp_path / "first.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT_DIR / "run.py"), *args],
            cwd=ROOT_DIR, env=env, stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (progress.exists() and int(progress.read_text() or 0) >= 5):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "training did not reach step 5"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["step"] == 4

    again = run_cli(*args, env={k: env[k] for k in ("TUNESMITH_OUTPUT",)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at step 4" in again.stderr + again.stdout

    resumed, uninterrupted = _weights(run_dir), _weights(reference)
    assert resumed and resumed.keys() == uninterrupted.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=1e-6, rtol=1e-5)
    last = series(logged(run_dir), "train/loss")[-1]
    ref_last = series(logged(reference), "train/loss")[-1]
    assert last[0] == ref_last[0] == 5 and last[1] == pytest.approx(ref_last[1], rel=1e-5)

"""The walking skeleton end to end: `python run.py` on the tiny model, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.pipeline import run_pipeline
from tests.conftest import TINY, run_cli


def _only_run_dir(root: Path) -> Path:
    dirs = [p for p in (root / "runs").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_cli_run_on_tiny_model_writes_everything_into_one_run_dir(
    tmp_path: Path, alpaca_file: Path
) -> None:
    proc = run_cli(
        *TINY, "data=alpaca", f"data.path={alpaca_file}", env={"TUNESMITH_OUTPUT": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run_dir(tmp_path)
    for name in (
        "config.yaml",
        "data/train.jsonl",
        "data/val.jsonl",
        "data/test.jsonl",
        "data/rejects.jsonl",
        "checkpoints/last.ckpt",
        "artifact/adapter_config.json",
        "metrics.json",
        "predictions.jsonl",
        "loss_curve.png",
        "export/adapter",
    ):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"base", "tuned", "directions"}
    for side in ("base", "tuned"):
        assert {"exact_match", "perplexity"} <= set(metrics[side])
    assert metrics["directions"]["perplexity"] == "lower"
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert rows and {"prompt", "reference", "base", "tuned"} <= set(rows[0])
    # the table a user reads
    assert "metric" in proc.stdout and "base" in proc.stdout and "tuned" in proc.stdout


def test_adapter_loads_with_peft_on_the_base_model(
    tmp_path: Path, make_cfg, alpaca_file: Path
) -> None:
    from peft import PeftModel

    from framework.manager import build_plugin_manager
    from framework.run import Run

    cfg = make_cfg(*TINY, "data=alpaca", f"data.path={alpaca_file}", "stages=[prepare,train]")
    run_pipeline(cfg)
    run = Run(cfg=cfg, dir=Path(cfg.paths.run_dir), plugins=build_plugin_manager())
    base, _ = run.build_base()
    tuned = PeftModel.from_pretrained(base, Path(cfg.paths.run_dir) / "artifact")
    assert any("lora_A" in n for n, _ in tuned.named_parameters())


def test_stages_run_alone_and_a_finished_run_is_not_overwritten(
    make_cfg, alpaca_file: Path
) -> None:
    cfg = make_cfg(*TINY, "data=alpaca", f"data.path={alpaca_file}", "stages=[prepare]")
    run_pipeline(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert (run_dir / "data/train.jsonl").exists()
    assert not (run_dir / "checkpoints").exists()
    train = (run_dir / "data/train.jsonl").read_bytes()
    # same command again: finished, nothing redone
    run_pipeline(cfg)
    assert (run_dir / "data/train.jsonl").read_bytes() == train


def test_full_method_trains_and_evaluates(make_cfg, alpaca_file: Path) -> None:
    cfg = make_cfg(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "method=full",
        "optim.lr=1e-3",
        "stages=[prepare,train,evaluate]",
    )
    metrics = run_pipeline(cfg)
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    assert (Path(cfg.paths.run_dir) / "artifact/model.safetensors").exists()


def test_multirun_gives_each_job_its_own_directory(tmp_path: Path, alpaca_file: Path) -> None:
    proc = run_cli(
        "-m",
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "method.r=4,8",
        "stages=[prepare,train]",
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "multirun").glob("*/*") if (p / "config.yaml").exists())
    assert len(jobs) == 2
    ranks = sorted(json.loads((j / "artifact/adapter_config.json").read_text())["r"] for j in jobs)
    assert ranks == [4, 8]


def test_help_lists_groups_and_options() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "tunesmith" in proc.stdout
    methods = "dora, freeze, full, ia3, lora, prefix_tuning, prompt_tuning, qlora"
    for line in (f"method: {methods}", "model: hf, smollm2, tiny"):
        assert line in proc.stdout


def test_unknown_method_is_one_clear_message(tmp_path: Path, alpaca_file: Path) -> None:
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "method.name=lroa",
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert "No plugin serves method 'lroa'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_smollm2_lora_runs_a_few_steps(tmp_path: Path) -> None:
    proc = run_cli(
        "trainer.max_steps=2",
        "evaluator.max_samples=4",
        "evaluator.max_new_tokens=16",
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["base"]["perplexity"] > 1 and metrics["tuned"]["perplexity"] > 1
    assert (run / "artifact/adapter_model.safetensors").exists()

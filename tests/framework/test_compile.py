"""``model.compile=true``: training through ``torch.compile`` gives the same losses."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli


def _losses(run_dir: Path) -> list[float]:
    with (run_dir / "logs/metrics.csv").open() as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_compiled_training_runs_from_the_cli_with_the_same_losses(
    tmp_path: Path, alpaca_file: Path
) -> None:
    common = (
        *TINY,
        "stages=[prepare,train]",
        "data=alpaca",
        f"data.path={alpaca_file}",
        "trainer.max_steps=3",
        "data.packing=false",  # padded batches of several lengths: the dynamic shapes case
    )
    losses = {}
    for compiled in ("false", "true"):
        run_dir = tmp_path / f"compile-{compiled}"
        proc = run_cli(*common, f"model.compile={compiled}", f"hydra.run.dir={run_dir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        said = "compiled with torch.compile" in proc.stdout + proc.stderr
        assert said == (compiled == "true")
        losses[compiled] = _losses(run_dir)
    assert len(losses["true"]) == 3
    assert losses["true"][0] == pytest.approx(losses["false"][0], rel=1e-5)  # step 1
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)  # the curve


def test_compile_blocks_compiles_each_decoder_layer_in_place(make_cfg) -> None:
    from framework.train.module import compile_blocks, uncompile_blocks
    from tests.helpers import new_run

    run = new_run(make_cfg(*TINY))
    model, _ = run.ensure_model()
    names = sorted(k for k, _ in model.named_parameters())
    assert compile_blocks(model) == model.config.num_hidden_layers
    assert sorted(k for k, _ in model.named_parameters()) == names  # checkpoints unchanged
    # after training, evaluation and export get the eager model back (FineTuneModule.on_fit_end)
    assert uncompile_blocks(model) == model.config.num_hidden_layers
    assert not any(getattr(m, "_compiled_call_impl", None) for m in model.modules())
    assert uncompile_blocks(model) == 0

"""Nothing on the way to the first optimizer step draws a plot or imports matplotlib for
tunesmith's own sake: plots are drawn after training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from framework.resolvers import ROOT_DIR
from tests.conftest import TINY, run_cli


def test_help_imports_no_plotting_library() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT_DIR / "run.py"), "--help"],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert not {"matplotlib", "scipy", "torchmetrics", "torch"} & imported


@pytest.mark.slow
def test_plots_are_drawn_after_the_first_step(tmp_path: Path, alpaca_file: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "step1.json"
    proc = run_cli(
        *TINY,
        "stages=[prepare,train]",
        "data=alpaca",
        f"data.path={alpaca_file}",
        "trainer.max_steps=2",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        "+callbacks.step_probe._target_=tests.framework.step_probe.StepOne",
        f"+callbacks.step_probe.out={out}",
        f"+callbacks.step_probe.run_dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(out.read_text("utf-8"))
    assert seen["files"] == {"data/lengths.png": False, "loss_curve.png": False}
    # matplotlib may be loaded at step 1 only by torchmetrics (which Lightning imports),
    # never by tunesmith itself
    if seen["modules"]["matplotlib.pyplot"]:
        assert seen["modules"]["torchmetrics.utilities.plot"]
    for name in ("data/lengths.png", "loss_curve.png"):
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"  # drawn after training

"""Shared fixtures: compose configs like run.py does, shrunk for fast CPU tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# The tests never use the network: anything that would ask the Hub fails at once instead. A test
# that serves its own hub on 127.0.0.1 (tests/test_hub_download.py) unsets this for its runs.
# Set before anything imports huggingface_hub, which reads it once.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from framework.cli import CONFIG_DIR  # noqa: E402
from framework.resolvers import ROOT_DIR, register_resolvers  # noqa: E402

register_resolvers()

#: Overrides that make any run tiny and fast.
TINY = (
    "model=tiny",
    "trainer.max_steps=4",
    "trainer.max_epochs=-1",  # tiny runs end on their step budget (max_steps), not on epochs
    "trainer.precision=32-true",
    "optim.lr=2e-3",  # the tiny random model learns its sums in a few steps only this fast
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "evaluator.max_new_tokens=8",
)


def compose_config(overrides: Sequence[str] = (), run_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides``; paths point into ``run_dir``."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir.parent)
            cfg.paths.run_dir = str(run_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides)`` -> a config whose run directory is ``tmp_path / "run"``."""

    def _make(*overrides: str) -> DictConfig:
        return compose_config(overrides, run_dir=tmp_path / "run")

    return _make


def write_sums(path: Path) -> Path:
    """Write 40 alpaca records of small sums (the tiny model can overfit them) to ``path``."""
    rows = [
        {"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": str(a + b)}
        for a in range(1, 9)
        for b in range(1, 6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def alpaca_file(tmp_path: Path) -> Path:
    """A small alpaca JSONL file (arithmetic) the tiny model can overfit."""
    return write_sums(tmp_path / "mini.jsonl")


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python run.py *args`` as a user would; returns the completed process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT_DIR / "run.py"), *args],
        cwd=cwd or ROOT_DIR,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- example plugin
#: The example third-party package (examples/plugins/tunesmith-example) and its dist name.
EXAMPLE_PLUGIN = ROOT_DIR / "examples" / "plugins" / "tunesmith-example"
EXAMPLE_DIST = "tunesmith-example 0.1.0"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the example package as ``pip install`` leaves it (with its
    ``.dist-info`` and entry points); put it on ``PYTHONPATH`` to have it installed."""
    root = tmp_path_factory.mktemp("example_plugin")
    src = root / "src"  # build from a copy, so no build/ or .egg-info lands in the checkout
    shutil.copytree(
        EXAMPLE_PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (target / "tunesmith_example" / "conf" / "method" / "last_layers.yaml").is_file()
    return target


@pytest.fixture
def on_path(installed: Path, monkeypatch: pytest.MonkeyPatch):
    """The example package importable (and its entry points visible) in this process."""
    monkeypatch.syspath_prepend(str(installed))
    yield installed
    for name in [m for m in sys.modules if m.startswith("tunesmith_example")]:
        del sys.modules[name]

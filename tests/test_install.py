"""tunesmith as an installed tool: build the wheel, install it into a fresh virtual environment
(non-editable) and run the ``tunesmith`` command from another directory.

The fresh environment sees the dependencies already installed in this one through a ``.pth``
file (nothing is downloaded or reinstalled), but not the checkout: what runs is the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT_DIR, TINY, write_sums

#: What the wheel is built from (pyproject.toml, setup.py and the folders they name).
SOURCES = (
    "framework",
    "plugins",
    "conf",
    "data/demo",
    "data/examples",
    "hydra_plugins",
    "tunesmith",
)
SOURCE_FILES = ("pyproject.toml", "setup.py", "README.md")


def _sh(*args: str | Path, cwd: Path, env: dict | None = None, timeout: int = 120):
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the tunesmith wheel installed (``--no-deps``)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"  # build from a copy: no build/ or .egg-info lands in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "local")
    for name in SOURCES:
        shutil.copytree(ROOT_DIR / name, src / name, ignore=ignore)
    for name in SOURCE_FILES:
        shutil.copy2(ROOT_DIR / name, src / name)
    _sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "--no-index", "-w", root / "dist", src, cwd=root)  # fmt: skip
    (wheel,) = (root / "dist").glob("tunesmith-*.whl")

    env_dir = root / "venv"
    _sh(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=root)
    python = env_dir / "bin" / "python"
    site = Path(_sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=root).stdout.strip())  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_deps_of_the_test_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    # --ignore-installed: pip never touches the tunesmith it sees through the .pth file
    _sh(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-index", "--ignore-installed", wheel, cwd=root)  # fmt: skip

    # no top-level `framework` or `plugins` package: they live inside the tunesmith package
    assert not (site / "framework").exists() and not (site / "plugins").exists()
    assert (site / "tunesmith" / "_root" / "framework" / "hookspecs.py").is_file()
    assert (site / "tunesmith" / "_root" / "conf" / "config.yaml").is_file()
    assert (site / "tunesmith" / "_root" / "data" / "demo" / "contacts.jsonl").is_file()
    board = site / "tunesmith" / "_root" / "plugins" / "board"
    assert (board / "templates" / "base.html").is_file() and (
        board / "static" / "board.js"
    ).is_file()
    assert not list((site / "tunesmith" / "_root" / "conf").glob("local/*.yaml"))
    return env_dir


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TUNESMITH_OUTPUT")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.slow
def test_the_installed_tunesmith_command_runs_from_any_directory(
    venv: Path, tmp_path: Path
) -> None:
    tunesmith = venv / "bin" / "tunesmith"
    work = tmp_path / "work"
    (work / "conf" / "experiment").mkdir(parents=True)
    (work / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: tiny\nseed: 1234\n"
    )
    extra = tmp_path / "more_recipes" / "experiment"
    extra.mkdir(parents=True)
    (extra / "theirs.yaml").write_text("# @package _global_\nseed: 4321\n")
    env = _env()

    help_text = _sh(tunesmith, "--help", cwd=work, env=env).stdout
    assert "tunesmith [group=option ...]" in help_text
    assert "mine" in help_text  # the current directory's conf/ joins the groups

    listing = _sh(tunesmith, "plugins", cwd=work, env=env).stdout
    assert "lora" in listing and "tunesmith (in-tree)" in listing

    # the core is the installed one, under the tunesmith package; both imports are the same
    code = (
        "import tunesmith, framework, plugins.models.hf as hf; "
        "assert tunesmith.hookimpl is framework.hookimpl; "
        "print(framework.__file__); print(hf.__file__)"
    )
    where = _sh(venv / "bin" / "python", "-c", code, cwd=work, env=env).stdout
    assert all("/tunesmith/_root/" in line for line in where.split()), where

    recipe = _sh(tunesmith, "experiment=mine", "--cfg", "job", cwd=work, env=env).stdout
    assert "seed: 1234" in recipe and "name: tiny" in recipe
    other = _sh(tunesmith, "--config-dir", extra.parent, "experiment=theirs", "--cfg", "job",
                cwd=work, env=env).stdout  # fmt: skip
    assert "seed: 4321" in other

    data = write_sums(work / "sums.jsonl")
    _sh(tunesmith, *TINY, "data=alpaca", f"data.path={data.name}", "trainer.max_steps=2",
        "stages=[prepare,train]", cwd=work, env=env, timeout=300)  # fmt: skip
    (run,) = (work / "outputs" / "runs").iterdir()
    assert (run / "data" / "train.jsonl").is_file() or list(run.rglob("train*.jsonl")), run
    assert list(run.rglob("checkpoints/last*.ckpt")), sorted(p.name for p in run.rglob("*"))

"""Every option of every config group composes, and the root config is runnable."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework.cli import CONFIG_DIR
from tests.conftest import compose_config

CONF = Path(CONFIG_DIR)
#: Groups whose options are full configs to compose on their own.
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in {"hydra", "local"})


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in GROUPS for o in _options(g)],
)
def test_every_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"{group}={option}"], run_dir=tmp_path / "run")
    # Everything except values that need a running Hydra job must resolve.
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["stages"]


def test_every_config_file_starts_with_a_comment() -> None:
    for path in CONF.rglob("*.yaml"):
        first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path} must start with a comment saying what it is for"


def test_default_config_names_the_documented_choices(tmp_path: Path) -> None:
    cfg = compose_config([], run_dir=tmp_path / "run")
    assert cfg.model.name == "smollm2"
    assert cfg.method.name == "lora"
    assert list(cfg.stages) == ["prepare", "train", "evaluate", "export"]
    assert set(cfg.evaluator.metrics) >= {"exact_match", "perplexity"}


def test_command_line_overrides_reach_the_config(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "method=full",
            "trainer.max_epochs=1",
            "optim.lr=1e-4",
            "seed=7",
            "method=lora",
            "method.r=4",
        ],
        run_dir=tmp_path / "run",
    )
    assert cfg.trainer.max_epochs == 1 and cfg.optim.lr == 1e-4 and cfg.seed == 7
    assert cfg.method.r == 4

"""Multi-device training through Lightning's strategies: DDP runs on CPU, FSDP/DeepSpeed compose."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from framework.errors import ConfigError
from tests.conftest import TINY, compose_config, run_cli

PROBE = '''
"""Test probe: each process writes the examples (token ids) of every batch it trains on."""
import json

from lightning.pytorch import Callback

from framework import hookimpl


class SeenExamples(Callback):
    def __init__(self, run_dir):
        self.run_dir = run_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        path = self.run_dir / f"seen_rank{trainer.global_rank}.jsonl"
        with path.open("a") as f:
            for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
                row = {"epoch": trainer.current_epoch, "ids": [i for i, m in zip(ids, mask) if m]}
                f.write(json.dumps(row) + "\\n")


@hookimpl
def tunesmith_configure_callbacks(cfg, run):
    return [SeenExamples(run.dir)]
'''


def test_ddp_on_cpu_trains_two_processes_on_different_shards_and_saves_once(
    tmp_path: Path, alpaca_file: Path
) -> None:
    (tmp_path / "ddp_probe.py").write_text(textwrap.dedent(PROBE))
    run_dir = tmp_path / "run"
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "data.batch_size=4",  # 32 training examples: 4 batches of 4 per process = one epoch
        "data.packing=false",  # the probe reads each example from its padded row
        "stages=[prepare,train]",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "plugins=[ddp_probe]",
        f"hydra.run.dir={run_dir}",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    seen = {}
    for rank in (0, 1):
        rows = [json.loads(line) for line in (run_dir / f"seen_rank{rank}.jsonl").open()]
        assert {r["epoch"] for r in rows} == {0}
        seen[rank] = [tuple(r["ids"]) for r in rows]
    n_train = sum(1 for _ in (run_dir / "data/train.jsonl").open())
    assert len(seen[0]) == len(seen[1]) == n_train // 2
    assert not set(seen[0]) & set(seen[1]), "the two processes trained on the same examples"
    assert len(set(seen[0]) | set(seen[1])) == n_train

    # one result, written by rank 0 only
    assert (run_dir / "artifact/adapter_model.safetensors").is_file()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".artifact")]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    state = json.loads((run_dir / "run_state.json").read_text())
    assert state == {"stages_done": ["prepare", "train"], "status": "finished"}


@pytest.mark.parametrize("option", ["ddp", "fsdp", "deepspeed", "gpu"])
def test_multi_device_trainer_configs_compose_with_any_method(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"trainer={option}", "method=qlora"], run_dir=tmp_path / "run")
    default = compose_config([], run_dir=tmp_path / "default")
    assert cfg.trainer.max_epochs == default.trainer.max_epochs  # inherits trainer/default.yaml
    assert cfg.method.gradient_checkpointing is True


def test_fsdp_strategy_is_built_from_its_config(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    cfg = compose_config(["trainer=fsdp"], run_dir=tmp_path / "run")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert LlamaDecoderLayer in policy._module_classes


def test_fsdp_on_a_machine_without_gpu_is_a_clear_config_error(tmp_path: Path) -> None:
    from framework.manager import build_plugin_manager
    from framework.run import Run
    from framework.train.stage import build_trainer

    cfg = compose_config([*TINY, "trainer=fsdp"], run_dir=tmp_path / "run")
    run = Run(cfg=cfg, dir=tmp_path / "run", plugins=build_plugin_manager())
    with pytest.raises(ConfigError) as err:
        build_trainer(run)
    assert "trainer" in str(err.value) and "GPU" in str(err.value)


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"
)
def test_deepspeed_strategy_is_built_from_its_config(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DeepSpeedStrategy

    cfg = compose_config(["trainer=deepspeed"], run_dir=tmp_path / "run")
    assert isinstance(instantiate(cfg.trainer.strategy), DeepSpeedStrategy)


def test_consolidated_weights_rebuild_the_same_model(make_cfg, alpaca_file: Path) -> None:
    """What rank 0 does after FSDP/DeepSpeed: gathered state dict -> fresh model -> same outputs."""
    import torch

    from framework.train.stage import rebuild_with_state
    from tests.helpers import batch_of, fit

    cfg = make_cfg(*TINY, "data=alpaca", f"data.path={alpaca_file}", "trainer.max_steps=2")
    run = fit(cfg)
    state = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    rebuilt = rebuild_with_state(run, state)
    batch = batch_of(run)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(**batch).logits, run.model.eval()(**batch).logits)

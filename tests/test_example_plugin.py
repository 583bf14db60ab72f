"""The example plugin package in examples/plugins/, installed with pip, used like a user would.

The package is pip-installed (``--no-deps --no-build-isolation --target``) into a temporary
directory that only these tests put on the path: the shared environment is never changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.errors import HydraException

from framework.errors import ConfigError
from tests.conftest import EXAMPLE_DIST as DIST
from tests.conftest import TINY, compose_config, run_cli


def test_installed_plugin_trains_evaluates_and_exports_the_tiny_model(
    installed: Path, tmp_path: Path, alpaca_file: Path
) -> None:
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "method=last_layers",  # a config option shipped by the package
        "evaluator=token_f1",
        "stages=[prepare,train,evaluate,export]",
        "export.formats=[merged]",
        env={"TUNESMITH_OUTPUT": str(tmp_path), "PYTHONPATH": str(installed)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    for side in ("base", "tuned"):
        assert set(metrics[side]) == {"exact_match", "token_f1", "perplexity"}
        assert 0.0 <= metrics[side]["token_f1"] <= 1.0
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    assert "token_f1" in proc.stdout  # in the printed table

    from safetensors import safe_open

    with safe_open(str(run / "artifact" / "last_layers.safetensors"), "pt") as f:
        trained = list(f.keys())
    # the tiny model has 2 blocks: only the last one trained (method.n_layers=1)
    assert trained and all(".layers.1." in name for name in trained)
    assert (run / "export" / "merged" / "model.safetensors").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["method"] == "last_layers" and 0 < summary["trainable"] < summary["total"]


def test_plugins_command_names_the_package_serving_each_name(installed: Path) -> None:
    proc = run_cli("plugins", "--json", env={"PYTHONPATH": str(installed)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    served = {(s["stage"], n["name"]): n["providers"] for s in data["stages"] for n in s["names"]}
    assert [(p["plugin"], p["package"]) for p in served[("method", "last_layers")]] == [
        ("example", DIST)
    ]
    assert [(p["plugin"], p["package"]) for p in served[("metric", "token_f1")]] == [
        ("example", DIST)
    ]
    assert [(p["plugin"], p["package"]) for p in served[("method", "lora")]] == [
        ("plugins.methods.lora", "tunesmith (in-tree)")
    ]
    (conf,) = data["config_packages"]
    assert (conf["name"], conf["package"], conf["dist"]) == (
        "example",
        "tunesmith_example.conf",
        DIST,
    )
    assert {"evaluator/token_f1", "method/last_layers"} <= set(conf["options"])


def test_disable_switch_removes_the_hooks_and_the_config_options(
    installed: Path, tmp_path: Path
) -> None:
    env = {"PYTHONPATH": str(installed), "TUNESMITH_DISABLE_PLUGINS": "example"}
    proc = run_cli("plugins", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "disabled by TUNESMITH_DISABLE_PLUGINS: example" in proc.stdout
    assert "last_layers" not in proc.stdout and "token_f1" not in proc.stdout
    assert "config options added by plugin packages: none" in proc.stdout

    proc = run_cli(
        "model=tiny", "method=last_layers", env={**env, "TUNESMITH_OUTPUT": str(tmp_path)}
    )
    assert proc.returncode != 0
    assert "Could not find 'method/last_layers'" in proc.stderr
    assert "lora" in proc.stderr  # Hydra lists the options that are there
    assert not (tmp_path / "runs").exists()


def test_config_options_of_an_installed_package_compose(on_path: Path, monkeypatch) -> None:
    cfg = compose_config(["method=last_layers", "evaluator=token_f1", "method.n_layers=2"])
    assert cfg.method.name == "last_layers" and cfg.method.n_layers == 2
    assert list(cfg.evaluator.metrics) == ["exact_match", "token_f1", "perplexity"]
    assert cfg.evaluator.max_new_tokens_limit == 256  # the rest comes from evaluator/default.yaml
    monkeypatch.setenv("TUNESMITH_DISABLE_PLUGINS", "example")
    with pytest.raises(HydraException, match="method/last_layers"):
        compose_config(["method=last_layers"])


def test_last_layers_saves_only_what_trained_and_loads_it_back(
    on_path: Path, make_cfg, tmp_path: Path
) -> None:
    import torch
    from tunesmith_example import last_layers

    from framework.manager import build_plugin_manager
    from framework.run import Run

    cfg = make_cfg("model=tiny")
    run = Run(cfg=cfg, dir=tmp_path, plugins=build_plugin_manager(entry_points=False))
    model, tokenizer = run.build_base()
    last_layers.make_trainable(model, n_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.1." in n for n in trainable)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trainable:
                p.add_(1.0)  # "training"
    last_layers.save_trained(model, tokenizer, tmp_path)

    fresh, _ = run.build_base()
    before = {n: p.clone() for n, p in fresh.named_parameters()}
    loaded = last_layers.load_trained(fresh, tmp_path)
    for name, p in loaded.named_parameters():
        expected = dict(model.named_parameters())[name] if name in trainable else before[name]
        assert torch.equal(p, expected), name

    with pytest.raises(ConfigError, match="method.n_layers"):
        last_layers.make_trainable(fresh, n_layers=0)


def test_token_f1_gives_partial_credit(on_path: Path) -> None:
    from tunesmith_example.token_f1 import mean_token_f1, token_f1

    assert token_f1('{"name": "Ann", "age": 30}', '{"name": "Ann", "age": 31}') == 0.75
    assert token_f1("Paris", "paris") == 1.0
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("我住在北京", "我住在上海") == pytest.approx(0.6)
    assert mean_token_f1(["a b", "c"], ["a c", "c"]) == pytest.approx(0.75)

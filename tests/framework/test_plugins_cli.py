"""`python run.py plugins`: the listing of stages, names and who serves them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from framework import plugins_cli


def test_listing_has_every_stage_and_the_in_tree_providers(capsys) -> None:
    assert plugins_cli.main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    stages = {s["stage"]: s for s in data["stages"]}
    assert {"stage", "file", "format", "objective", "model", "method", "metric", "export"} <= set(
        stages
    )
    assert stages["method"]["config_key"] == "method.name"
    names = {n["name"]: n["providers"] for n in stages["model"]["names"]}
    [tiny] = names["tiny"]
    assert (tiny["plugin"], tiny["package"]) == ("plugins.models.tiny", "tunesmith (in-tree)")
    assert tiny["description"]


def test_listing_shows_what_each_plugin_declared(capsys) -> None:
    """Direction of metrics, kind of methods, options of objectives: read, not guessed."""
    assert plugins_cli.main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    declared = {
        (s["stage"], n["name"]): n["providers"][-1]["declared"]
        for s in data["stages"]
        for n in s["names"]
    }
    assert declared[("metric", "perplexity")]["higher_is_better"] is False
    assert declared[("metric", "exact_match")]["higher_is_better"] is True
    assert declared[("method", "qlora")] == {
        "kind": "adapter",
        "base_bits": 4,
        "trainable_share": None,
    }
    assert declared[("method", "full")]["kind"] == "full"
    assert "options" in declared[("objective", "sft")]
    assert declared[("stage", "chat")]["session"] is True
    assert plugins_cli.main([]) == 0
    table = capsys.readouterr().out
    assert "lower is better" in table and "kind=full" in table


def test_cfg_plugins_module_is_listed_as_such(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "ts_listed_plugin.py").write_text(
        "from framework import hookimpl\n\n"
        "@hookimpl\ndef tunesmith_provides():\n    return {'metric': ['[bracketed]']}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert plugins_cli.main(["--with", "ts_listed_plugin"]) == 0
    finally:
        sys.modules.pop("ts_listed_plugin", None)
    out = capsys.readouterr().out
    # shown as typed (rich markup is escaped), with where it came from
    assert "[bracketed]" in out and "ts_listed_plugin" in out and "cfg.plugins" in out


def test_unimportable_module_is_one_clear_error(capsys) -> None:
    assert plugins_cli.main(["--with", "no_such_module_xyz"]) == 2
    err = capsys.readouterr().err
    assert "could not be imported" in err and "Traceback" not in err


def test_listing_the_plugins_loads_no_heavy_library() -> None:
    """Building the plugin manager imports every in-tree plugin: none may pull in torch."""
    import subprocess

    from framework.resolvers import ROOT_DIR

    code = (
        "import sys; from framework.manager import build_plugin_manager; "
        "build_plugin_manager(); "
        "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'peft') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

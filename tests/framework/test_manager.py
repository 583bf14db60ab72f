"""Plugin discovery: in-tree tuple, the `tunesmith` entry-point group, and cfg.plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from framework import hookspecs
from framework.errors import ConfigError
from framework.manager import INTREE_PLUGINS, build_plugin_manager


def test_intree_plugins_serve_the_demo_names() -> None:
    pm = build_plugin_manager(entry_points=False)
    assert {"smollm2", "hf", "tiny"} <= set(pm.names("model"))
    assert {"lora", "full"} <= set(pm.names("method"))
    assert {"exact_match", "perplexity"} <= set(pm.names("metric"))
    assert {"prepare", "train", "evaluate", "export"} <= set(pm.names("stage"))
    assert len(pm.pm.get_plugins()) == len(INTREE_PLUGINS)


def test_unknown_name_lists_served_names_and_their_packages() -> None:
    pm = build_plugin_manager(entry_points=False)
    with pytest.raises(ConfigError) as err:
        pm.require("method", "lroa")
    text = str(err.value)
    assert "No plugin serves method 'lroa'" in text
    assert "Did you mean 'lora'?" in text
    assert "plugins.methods.full (tunesmith (in-tree))" in text
    assert "method.name" in text


def _write_plugin_package(root: Path, module: str, method: str) -> None:
    (root / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            from framework import hookimpl

            @hookimpl
            def tunesmith_provides():
                return {{"method": ["{method}"]}}

            @hookimpl
            def tunesmith_apply_method(name, model):
                if name != "{method}":
                    return None
                for p in model.parameters():
                    p.requires_grad_(False)
                return model
            """
        )
    )


def test_entry_point_plugin_is_found_once_installed(tmp_path: Path, monkeypatch) -> None:
    # An installed distribution is a module plus a .dist-info with entry_points.txt on
    # sys.path -- exactly what `pip install` leaves behind.
    _write_plugin_package(tmp_path, "ts_demo_plugin", "frozen_all")
    dist = tmp_path / "ts_demo_plugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ts-demo-plugin\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[tunesmith]\ndemo = ts_demo_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = build_plugin_manager()
    assert "frozen_all" in pm.names("method")
    provider = pm.served["method"]["frozen_all"][0]
    assert provider.plugin == "demo" and provider.package == "ts-demo-plugin 1.2.3"

    monkeypatch.setenv("TUNESMITH_DISABLE_PLUGINS", "demo")
    assert "frozen_all" not in build_plugin_manager().names("method")


def test_cfg_plugins_module_is_registered(tmp_path: Path, monkeypatch) -> None:
    _write_plugin_package(tmp_path, "ts_cfg_plugin", "nothing_trains")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = build_plugin_manager(extra=["ts_cfg_plugin"], entry_points=False)
    assert pm.served["method"]["nothing_trains"][0].package == "cfg.plugins"
    sys.modules.pop("ts_cfg_plugin", None)


def test_unimportable_cfg_plugin_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="could not be imported"):
        build_plugin_manager(extra=["no_such_module_xyz"], entry_points=False)


def test_misspelled_hook_is_caught(tmp_path: Path, monkeypatch, caplog) -> None:
    (tmp_path / "ts_bad_hook.py").write_text(
        "from framework import hookimpl\n\n@hookimpl\ndef tunesmith_aply_method(name):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # named in cfg.plugins: asked for explicitly, so an error
    with pytest.raises(ConfigError, match="Did you mean 'tunesmith_apply_method'"):
        build_plugin_manager(extra=["ts_bad_hook"], entry_points=False)
    # installed (entry point): reported and skipped, everything else works
    dist = tmp_path / "ts_bad_hook-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ts-bad-hook\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[tunesmith]\nbad = ts_bad_hook\n")
    pm = build_plugin_manager()
    assert "bad" in pm.failed and not pm.pm.has_plugin("bad")
    assert "lora" in pm.names("method")
    assert "Did you mean 'tunesmith_apply_method'" in pm.failed["bad"]
    sys.modules.pop("ts_bad_hook", None)


def test_a_name_of_a_disabled_plugin_says_which_plugin_is_disabled(monkeypatch) -> None:
    monkeypatch.setenv("TUNESMITH_DISABLE_PLUGINS", "plugins.methods.dora")
    pm = build_plugin_manager(entry_points=False)
    with pytest.raises(ConfigError) as err:
        pm.require("method", "dora")
    text = str(err.value)
    assert "served by the plugin plugins.methods.dora, which is disabled" in text
    assert "TUNESMITH_DISABLE_PLUGINS=plugins.methods.dora" in text

    monkeypatch.setenv("TUNESMITH_DISABLE_PLUGINS", "plugins.files.csvfile")
    pm = build_plugin_manager(entry_points=False)
    with pytest.raises(ConfigError, match="served by the plugin plugins.files.csvfile, which is"):
        pm.require_file("data/table.csv")


def test_require_all_lists_every_unserved_name_at_once() -> None:
    pm = build_plugin_manager(entry_points=False)
    with pytest.raises(ConfigError) as err:
        pm.require_all(
            [
                ("method", "lora", "method.name"),
                ("metric", "exact_macth", "evaluator.metrics[0]"),
                ("export", "merge", "export.formats[0]"),
                ("file", "data/train.jsnl", "data.path"),
            ]
        )
    text = str(err.value)
    assert "3 names in the config are not served" in text
    assert "evaluator.metrics[0]: No plugin serves metric 'exact_macth'. Did you mean " in text
    assert "'exact_match'" in text
    assert "export.formats[0]: No plugin serves export 'merge'. Did you mean 'merged'?" in text
    assert "data.path: No plugin reads files like 'train.jsnl'" in text
    assert "Did you mean '.jsonl'?" in text


def test_the_longest_registered_suffix_picks_the_file_type(tmp_path, monkeypatch) -> None:
    (tmp_path / "ts_qa_files.py").write_text(
        "from framework import FileType, hookimpl\n\n"
        "@hookimpl\ndef tunesmith_provides():\n"
        "    return [FileType('.txt'), FileType('.qa.txt')]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = build_plugin_manager(extra=["ts_qa_files"], entry_points=False)
    assert pm.file_type("data/questions.QA.txt") == ".qa.txt"
    assert pm.file_type("notes.txt") == ".txt"
    assert pm.file_type("train.jsonl") == ".jsonl"
    assert pm.file_type(".txt") is None  # a bare suffix is no file name
    assert pm.file_type("README") is None
    sys.modules.pop("ts_qa_files", None)


def test_every_hookspec_has_a_docstring_with_its_result_policy() -> None:
    for name in dir(hookspecs):
        if name.startswith("tunesmith_"):
            doc = getattr(hookspecs, name).__doc__ or ""
            assert "Called" in doc, f"{name}: say when it is called"
            assert "Fan-out" in doc or "First result wins" in doc or "ignored" in doc, name


def test_per_record_hooks_ask_only_the_plugins_serving_the_name(
    tmp_path: Path, monkeypatch
) -> None:
    """``caller`` runs the plugins declaring the format (and wrappers of the hook), not every
    format plugin once per record; a name nobody declares still reaches the whole hook."""
    (tmp_path / "calls_plugin.py").write_text(
        textwrap.dedent(
            """
            from framework import DataFormat, hookimpl

            CALLS = []

            @hookimpl
            def tunesmith_provides():
                return [DataFormat("shout")]

            @hookimpl
            def tunesmith_parse_record(name, record):
                CALLS.append(name)
                return {"text": str(record).upper()} if name == "shout" else None
            """
        )
    )
    (tmp_path / "wrap_plugin.py").write_text(
        textwrap.dedent(
            """
            from framework import hookimpl
            from calls_plugin import CALLS

            @hookimpl(wrapper=True)
            def tunesmith_parse_record(name, record):
                CALLS.append("wrapped")
                return (yield)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = build_plugin_manager(extra=["calls_plugin", "wrap_plugin"], entry_points=False)
    calls = sys.modules["calls_plugin"].CALLS

    parse = pm.caller("tunesmith_parse_record", "format", "alpaca")
    example = parse(name="alpaca", record={"instruction": "Hi", "output": "Hello"}, data_cfg={})
    assert example["messages"][-1]["content"] == "Hello"
    assert calls == ["wrapped"]  # the wrapper ran; the other format plugin was not asked
    assert parse is pm.caller("tunesmith_parse_record", "format", "alpaca")  # built once

    calls.clear()
    shout = pm.caller("tunesmith_parse_record", "format", "shout")
    assert shout(name="shout", record="hi", data_cfg={}) == {"text": "HI"}
    assert calls == ["wrapped", "shout"]

    calls.clear()
    anyone = pm.caller("tunesmith_parse_record", "format", "undeclared")
    assert anyone is pm.hook.tunesmith_parse_record
    assert anyone(name="undeclared", record="x", data_cfg={}) is None
    assert "undeclared" in calls

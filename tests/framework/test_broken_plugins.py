"""A broken plugin is reported and skipped, whatever is wrong with it.

Each broken plugin here is a real installed distribution (a package plus its ``.dist-info``
with ``entry_points.txt``). Installed, it must not stop anything: ``python run.py plugins``
and a run still work, and the warning names the entry point and the package (name and
version), says what is wrong (with the nearest real hook for a misspelled one) and how to
switch it off. The same module named in ``cfg.plugins`` was asked for explicitly: an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.errors import ConfigError
from framework.manager import build_plugin_manager
from tests.conftest import TINY, run_cli, write_sums
from tests.framework.plugin_dists import forget, install_dist

#: name -> (distribution, version, module source, what the warning must say)
BROKEN: dict[str, tuple[str, str, str, list[str]]] = {
    "ts_misspelled": (
        "ts-misspelled",
        "0.3.1",
        """
        from framework import Metric, hookimpl

        @hookimpl
        def tunesmith_provides():
            return [Metric("shouting")]

        @hookimpl
        def tunesmith_compute_metric(metrics, ctx):
            return {"shouting": 1.0}
        """,
        ["'tunesmith_compute_metric'", "Did you mean 'tunesmith_compute_metrics'?"],
    ),
    "ts_importerr": (
        "ts-importerr",
        "1.0.0",
        """
        import no_such_dependency_xyz  # noqa: F401
        """,
        ["ModuleNotFoundError", "no_such_dependency_xyz"],
    ),
    "ts_badsig": (
        "ts-badsig",
        "2.0.0",
        """
        from framework import Method, hookimpl

        @hookimpl
        def tunesmith_provides():
            return [Method("sideways")]

        @hookimpl
        def tunesmith_apply_method(name, model, cfg, device):
            return model
        """,
        ["'tunesmith_apply_method' takes 'device'", "which the hook does not pass"],
    ),
    "ts_garbage": (
        "ts-garbage",
        "0.0.1",
        """
        from framework import hookimpl

        @hookimpl
        def tunesmith_provides():
            return 42
        """,
        ["its tunesmith_provides failed", "not int"],
    ),
    "ts_badkind": (
        "ts-badkind",
        "0.2.0",
        """
        from framework import Method, hookimpl

        @hookimpl
        def tunesmith_provides():
            return [Method("weird", kind="sometimes")]
        """,
        ["its tunesmith_provides failed", "kind must be one of"],
    ),
    "ts_undecorated": (
        "ts-undecorated",
        "0.9.0",
        """
        def tunesmith_provides():
            return {"metric": ["forgotten"]}
        """,
        ["'tunesmith_provides' without @hookimpl"],
    ),
}


def _entry(module: str) -> str:
    return module.removeprefix("ts_")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory where every plugin of :data:`BROKEN` is installed."""
    site = tmp_path_factory.mktemp("broken_site")
    for module, (dist, version, source, _) in BROKEN.items():
        install_dist(
            site,
            dist,
            version,
            {f"{module}/__init__.py": "", f"{module}/plugin.py": source},
            {_entry(module): f"{module}.plugin"},
        )
    return site


@pytest.fixture
def broken_installed(broken_site: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(broken_site))
    yield broken_site
    forget(*BROKEN)


def _check_warnings(text: str) -> None:
    for module, (dist, version, _, expected) in BROKEN.items():
        name = _entry(module)
        line = next((ln for ln in text.splitlines() if f"plugin '{name}'" in ln), None)
        assert line is not None, (name, text[-3000:])
        assert f"entry point '{name} = {module}.plugin'" in line, line
        assert f"{dist} {version}" in line, line
        assert f"TUNESMITH_DISABLE_PLUGINS={name}" in line, line
        for part in expected:
            assert part in line, (part, line)


def test_broken_installed_plugins_are_reported_and_skipped(
    broken_installed, capsys, caplog
) -> None:
    manager = build_plugin_manager()
    _check_warnings(capsys.readouterr().err + caplog.text)
    assert set(manager.failed) == {_entry(m) for m in BROKEN}
    # nothing of theirs is served; the in-tree plugins all are
    assert {"shouting", "sideways", "weird"}.isdisjoint(
        set(manager.names("metric")) | set(manager.names("method"))
    )
    assert {"lora", "full"} <= set(manager.names("method"))
    for name in manager.failed:
        assert not manager.pm.has_plugin(name)


def test_disabling_a_broken_plugin_silences_it(
    broken_installed, monkeypatch, capsys, caplog
) -> None:
    monkeypatch.setenv("TUNESMITH_DISABLE_PLUGINS", ",".join(_entry(m) for m in BROKEN))
    manager = build_plugin_manager()
    assert "broken" not in capsys.readouterr().err + caplog.text
    assert manager.failed == {}


@pytest.mark.parametrize("module", sorted(BROKEN))
def test_the_same_module_in_cfg_plugins_is_an_error(broken_installed, module: str) -> None:
    expected = BROKEN[module][3]
    with pytest.raises(ConfigError) as err:
        build_plugin_manager(extra=[f"{module}.plugin"], entry_points=False)
    text = str(err.value)
    assert f"'{module}.plugin'" in text and "cfg.plugins" in text
    for part in expected:
        assert part in text, (part, text)


def test_a_misspelled_hook_is_reported_with_the_nearest_hook(tmp_path: Path, monkeypatch) -> None:
    # the nearest real hook, also for a misspelling far from the end of the name
    (tmp_path / "ts_far_off.py").write_text(
        "from framework import hookimpl\n\n@hookimpl\ndef tunesmith_encod_exampel(name):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="Did you mean 'tunesmith_encode_example'"):
        build_plugin_manager(extra=["ts_far_off"], entry_points=False)
    forget("ts_far_off")


def test_cfg_plugins_naming_an_installed_plugin_registers_it_once(on_path) -> None:
    manager = build_plugin_manager(extra=["tunesmith_example.plugin"])
    assert manager.failed == {}
    assert [p.plugin for p in manager.providers("method", "last_layers")] == ["example"]


def test_run_py_plugins_lists_the_rest_and_warns(broken_site: Path) -> None:
    proc = run_cli("plugins", env={"PYTHONPATH": str(broken_site)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_warnings(proc.stderr)
    assert "lora" in proc.stdout and "sideways" not in proc.stdout


def test_a_run_works_with_broken_plugins_installed(broken_site: Path, tmp_path: Path) -> None:
    data = write_sums(tmp_path / "sums.jsonl")
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={data}",
        "stages=[prepare]",
        env={"PYTHONPATH": str(broken_site), "TUNESMITH_OUTPUT": str(tmp_path / "out")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_warnings(proc.stdout + proc.stderr)
    (run,) = (tmp_path / "out" / "runs").iterdir()
    assert (run / "data" / "train.jsonl").is_file()

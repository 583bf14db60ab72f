"""Config files from plugin packages: the tunesmith.conf entry points and the search-path plugin."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

from framework.cli import CONFIG_DIR
from framework.plugin_conf import config_packages
from hydra_plugins.tunesmith_searchpath.searchpath import TunesmithSearchPathPlugin


def _install_fake(root: Path, dist: str, entries: dict[str, str]) -> None:
    """A .dist-info on sys.path declaring ``tunesmith.conf`` entry points (what pip leaves)."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[tunesmith.conf]\n{lines}")


@pytest.fixture
def fake_conf_plugin(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    conf = tmp_path / "ts_fake_conf" / "conf"
    (conf / "method").mkdir(parents=True)
    (tmp_path / "ts_fake_conf" / "__init__.py").write_text("")
    (conf / "__init__.py").write_text("")
    (conf / "method" / "frozen.yaml").write_text("# a method\nname: frozen\n")
    _install_fake(tmp_path, "ts-fake-conf", {"fake": "ts_fake_conf.conf", "broken": "ts_nope.conf"})
    monkeypatch.syspath_prepend(str(tmp_path))
    yield conf
    for name in [m for m in sys.modules if m.startswith("ts_fake_conf")]:
        del sys.modules[name]


def _search_path(*dirs: str) -> ConfigSearchPathImpl:
    sp = ConfigSearchPathImpl()
    sp.append("hydra", "pkg://hydra.conf")
    for d in dirs:
        sp.append("main", f"file://{d}")
    return sp


def test_config_packages_lists_installed_ones_and_skips_broken(fake_conf_plugin, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        packages = config_packages(with_options=True)
    fake = [p for p in packages if p.name == "fake"]
    assert len(fake) == 1 and fake[0].dist == "ts-fake-conf 1.0"
    assert fake[0].options == ["method/frozen"] and fake[0].url == "pkg://ts_fake_conf.conf"
    assert "broken" not in {p.name for p in packages}
    assert "ts_nope.conf" in caplog.text  # the broken entry is reported, not fatal


def test_search_path_plugin_appends_packages_for_tunesmith_only(
    fake_conf_plugin, monkeypatch
) -> None:
    ours = _search_path(CONFIG_DIR)
    TunesmithSearchPathPlugin().manipulate_search_path(ours)
    paths = [e.path for e in ours.get_path()]
    assert paths.index("pkg://ts_fake_conf.conf") > paths.index(f"file://{CONFIG_DIR}")

    other = _search_path(str(fake_conf_plugin.parent))  # some other Hydra application
    TunesmithSearchPathPlugin().manipulate_search_path(other)
    assert "pkg://ts_fake_conf.conf" not in [e.path for e in other.get_path()]

    monkeypatch.setenv("TUNESMITH_DISABLE_PLUGINS", "fake")
    disabled = _search_path(CONFIG_DIR)
    TunesmithSearchPathPlugin().manipulate_search_path(disabled)
    assert "pkg://ts_fake_conf.conf" not in [e.path for e in disabled.get_path()]


def test_package_config_option_composes(fake_conf_plugin) -> None:
    from tests.conftest import compose_config

    assert compose_config(["method=frozen"]).method.name == "frozen"

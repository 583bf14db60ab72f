"""A Hydra ``SearchPathPlugin`` that appends ``pkg://<package>`` for every installed tunesmith
plugin that ships config files (entry-point group ``tunesmith.conf``, see
``framework/plugin_conf.py``), so ``method=my_method`` works once the plugin is installed.

Hydra loads every plugin under the ``hydra_plugins`` namespace for every Hydra application,
so this one acts only when the application is tunesmith: when tunesmith's ``conf/`` folder
(the one next to ``framework/hookspecs.py``) is on the search path.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def _is_tunesmith(search_path: ConfigSearchPath) -> bool:
    for element in search_path.get_path():
        path = element.path or ""
        if path.startswith("file://"):
            path = path[len("file://") :]
        elif "://" in path:
            continue
        if path and (Path(path).parent / "framework" / "hookspecs.py").is_file():
            return True
    return False


class TunesmithSearchPathPlugin(SearchPathPlugin):
    """Appends the config packages of installed tunesmith plugins, after tunesmith's own."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not _is_tunesmith(search_path):
            return
        from framework.plugin_conf import config_packages

        for package in config_packages():
            search_path.append(provider=f"tunesmith-plugin:{package.name}", path=package.url)

"""A Hydra ``SearchPathPlugin`` that extends tunesmith's config search path with

* the ``conf/`` folder of the current directory, when there is one (a user's own recipes:
  ``conf/experiment/my_recipe.yaml`` -> ``tunesmith experiment=my_recipe``), right after
  tunesmith's own ``conf/``; and
* ``pkg://<package>`` for every installed tunesmith plugin that ships config files
  (entry-point group ``tunesmith.conf``, see ``framework/plugin_conf.py``), so
  ``method=my_method`` works once the plugin is installed.

Options only join the groups: a file with the same name as one of tunesmith's is shadowed by
tunesmith's (give yours a new name). ``--config-dir DIR`` (Hydra's flag) adds another folder
the same way.

Hydra loads every plugin under the ``hydra_plugins`` namespace for every Hydra application,
so this one acts only when the application is tunesmith: when tunesmith's ``conf/`` folder
(the one next to ``framework/hookspecs.py``) is on the search path.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin

#: The folder of the current directory that is searched for a user's own config files.
USER_CONF = "conf"


def _tunesmith_conf(search_path: ConfigSearchPath) -> tuple[str, Path] | None:
    """``(search-path entry, folder)`` of tunesmith's ``conf/``, if it is on the path."""
    for element in search_path.get_path():
        path = element.path or ""
        if path.startswith("file://"):
            path = path[len("file://") :]
        elif "://" in path:
            continue
        if path and (Path(path).parent / "framework" / "hookspecs.py").is_file():
            return element.path, Path(path)
    return None


def _user_conf(ours: Path) -> Path | None:
    """The current directory's ``conf/`` when it exists and is not tunesmith's own."""
    folder = Path(os.getcwd()) / USER_CONF
    try:
        if folder.is_dir() and folder.resolve() != ours.resolve():
            return folder.resolve()
    except OSError:
        return None
    return None


class TunesmithSearchPathPlugin(SearchPathPlugin):
    """Adds the current directory's ``conf/`` and the config packages of installed plugins,
    after tunesmith's own ``conf/``."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        found = _tunesmith_conf(search_path)
        if found is None:
            return
        entry, ours = found
        user = _user_conf(ours)
        if user is not None:
            search_path.append(
                provider="tunesmith-user", path=f"file://{user}", anchor=SearchPathQuery(path=entry)
            )
        from framework.plugin_conf import config_packages

        for package in config_packages():
            search_path.append(provider=f"tunesmith-plugin:{package.name}", path=package.url)

"""Config files shipped by plugin packages: the ``tunesmith.conf`` entry-point group.

A plugin package can add options to tunesmith's config groups (``method=my_method``,
``evaluator=my_metric``...) without copying anything into ``conf/``: it ships a package of
YAML files laid out like ``conf/`` and names it in its pyproject::

    [project.entry-points."tunesmith.conf"]
    my_plugin = "my_plugin_pkg.conf"     # a package (a folder with __init__.py) of YAML files

The Hydra search-path plugin in ``hydra_plugins/tunesmith_searchpath`` appends
``pkg://my_plugin_pkg.conf`` to tunesmith's config search path, after ``conf/``, so the
package's options join the groups (an option with the same name as one in ``conf/`` is
shadowed by ours). ``TUNESMITH_DISABLE_PLUGINS=my_plugin`` leaves it out, like the hooks of
the ``tunesmith`` entry point of the same name.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass, field

from framework.manager import DISABLE_ENV

log = logging.getLogger(__name__)

#: The entry-point group naming packages of config files.
CONF_GROUP = "tunesmith.conf"


@dataclass
class ConfigPackage:
    """One package of config files from an installed plugin distribution."""

    name: str  # the entry-point name (what TUNESMITH_DISABLE_PLUGINS takes)
    package: str  # the dotted package holding the YAML files
    dist: str  # "<distribution> <version>"
    options: list[str] = field(default_factory=list)  # "group/option" it adds

    @property
    def url(self) -> str:
        """The Hydra search-path entry: ``pkg://<package>``."""
        return f"pkg://{self.package}"


def disabled_names() -> set[str]:
    """The plugin names in ``TUNESMITH_DISABLE_PLUGINS`` (comma-separated)."""
    import os

    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def list_options(package: str) -> list[str]:
    """The ``group/option`` config files inside ``package`` (group folders one level deep
    or nested, e.g. ``hydra/launcher/x``)."""
    from importlib import resources

    found: list[str] = []

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir() and not child.name.startswith(("_", ".")):
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml") and prefix:
                found.append(prefix + child.name[: -len(".yaml")])

    walk(resources.files(package), "")
    return sorted(found)


def config_packages(with_options: bool = False) -> list[ConfigPackage]:
    """The config packages of installed plugins, minus the disabled ones.

    A broken entry (its package cannot be found) is skipped with a warning: a bad
    third-party plugin never stops tunesmith from composing its own config.

    Args:
        with_options: also list the ``group/option`` files each package holds.
    """
    disabled = disabled_names()
    found: list[ConfigPackage] = []
    for ep in importlib.metadata.entry_points(group=CONF_GROUP):
        if ep.name in disabled or any(c.name == ep.name for c in found):
            continue
        package = ep.value.strip()
        dist = f"{ep.dist.metadata['Name']} {ep.dist.version}" if ep.dist else "unknown"
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError) as exc:
            spec = None
            log.warning("config package '%s' of plugin '%s' (%s): %s", package, ep.name, dist, exc)
        if spec is None or not spec.submodule_search_locations:
            log.warning(
                "plugin '%s' (%s) names the config package '%s' in the '%s' entry points, "
                "but there is no such package (a folder with __init__.py); its config "
                "options are not available.",
                ep.name,
                dist,
                package,
                CONF_GROUP,
            )
            continue
        entry = ConfigPackage(name=ep.name, package=package, dist=dist)
        if with_options:
            entry.options = list_options(package)
        found.append(entry)
    return found

"""The plugin manager: in-tree plugins, the ``tunesmith`` entry-point group, and ``cfg.plugins``.

Plugins come from three places, registered in this order:

1. the in-tree modules listed in :data:`INTREE_PLUGINS`;
2. every installed package that declares the entry-point group ``tunesmith``;
3. the dotted module paths in ``cfg.plugins`` (``plugins=[my_pkg.my_plugin]``).

Setting ``TUNESMITH_DISABLE_PLUGINS=name1,name2`` skips plugins by name (the entry-point
name, or the module path for in-tree and ``cfg.plugins`` modules).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import pluggy

from framework import PROJECT_NAME, hookspecs
from framework.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

#: The in-tree plugins, one small module per thing they implement.
INTREE_PLUGINS: tuple[str, ...] = (
    "plugins.stages",
    "plugins.files.jsonfile",
    "plugins.formats.alpaca",
    "plugins.objectives.sft",
    "plugins.models.hf",
    "plugins.models.smollm2",
    "plugins.models.tiny",
    "plugins.methods.lora",
    "plugins.methods.full",
    "plugins.metrics.exact_match",
    "plugins.metrics.perplexity",
    "plugins.exports.merged",
    "plugins.files.csvfile",
    "plugins.files.parquetfile",
    "plugins.formats.sharegpt",
    "plugins.formats.text",
    "plugins.formats.pairs",
    "plugins.objectives.pretrain",
    "plugins.metrics.token_accuracy",
    "plugins.metrics.accuracy",
    "plugins.metrics.choice_accuracy",
    "plugins.metrics.bleu",
    "plugins.metrics.rouge",
    "plugins.metrics.validation",
    "plugins.human_eval",
    "plugins.exports.adapter",
    "plugins.serve_stages",
    "plugins.methods.freeze",
    "plugins.methods.dora",
    "plugins.methods.ia3",
    "plugins.methods.prompt_tuning",
    "plugins.methods.prefix_tuning",
    "plugins.methods.qlora",
)

DISABLE_ENV = "TUNESMITH_DISABLE_PLUGINS"

#: Human names of the stage keys used by ``tunesmith_provides``, and the config key that picks them.
STAGE_KEYS: dict[str, str] = {
    "stage": "stages",
    "file": "data.path (file suffix)",
    "format": "data.format",
    "objective": "objective",
    "model": "model.name",
    "method": "method.name",
    "metric": "evaluator.metrics",
    "export": "export.formats",
}


@dataclass
class Provider:
    """One plugin serving one name: which plugin, and which installed package it came from."""

    plugin: str
    package: str


@dataclass
class TunesmithPluginManager:
    """A pluggy manager plus the table of names each stage serves."""

    pm: pluggy.PluginManager
    served: dict[str, dict[str, list[Provider]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    def names(self, stage: str) -> list[str]:
        """The names served for ``stage``, sorted."""
        return sorted(self.served.get(stage, {}))

    def require(self, stage: str, name: str) -> None:
        """Raise :class:`ConfigError` unless some plugin serves ``name`` for ``stage``."""
        table = self.served.get(stage, {})
        if name in table:
            return
        listing = (
            "\n".join(
                f"    {n:<16} from {', '.join(f'{p.plugin} ({p.package})' for p in provs)}"
                for n, provs in sorted(table.items())
            )
            or "    (none)"
        )
        failed = ""
        if self.failed:
            failed = "\n  plugins that failed to load: " + ", ".join(
                f"{k} ({v})" for k, v in self.failed.items()
            )
        raise ConfigError(
            f"No plugin serves {stage} '{name}'.{did_you_mean(name, table)}\n"
            f"  served names for {stage}:\n{listing}{failed}",
            where=STAGE_KEYS.get(stage, stage),
            hint=f"pick one of the names above, or install/list a plugin that serves '{name}'.",
        )


def _package_of(plugin: object, dist: importlib.metadata.Distribution | None) -> str:
    if dist is not None:
        return f"{dist.metadata['Name']} {dist.version}"
    module = getattr(plugin, "__name__", "")
    if module.startswith(("plugins.", "framework.")):
        return f"{PROJECT_NAME} (in-tree)"
    return "cfg.plugins"


def _say(message: str) -> None:
    """Warn the user: through logging when it is set up (a Hydra run), else on stderr."""
    if logging.getLogger().hasHandlers():
        log.warning("%s", message)
    else:
        print(f"warning: {message}", file=sys.stderr)


def _report_failure(name: str, source: str, exc: BaseException) -> None:
    _say(
        f"plugin '{name}' ({source}) failed to load and is left out: "
        f"{type(exc).__name__}: {exc}. The other plugins work; to silence this, fix or "
        f"uninstall it, or set {DISABLE_ENV}={name}."
    )


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def build_plugin_manager(
    extra: Iterable[str] = (), entry_points: bool = True
) -> TunesmithPluginManager:
    """Build the plugin manager for a run.

    Args:
        extra: dotted module paths from ``cfg.plugins``.
        entry_points: whether to load the ``tunesmith`` entry-point group.

    Returns:
        The manager, with every plugin registered and the served-names table filled in.

    Raises:
        ConfigError: a module in ``extra`` cannot be imported, or implements a hook that
            does not exist (a misspelled hook name).
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    failed: dict[str, str] = {}
    dists: dict[str, importlib.metadata.Distribution | None] = {}

    seen: set[str] = set()
    for modname in INTREE_PLUGINS:
        seen.add(modname)
        if modname in disabled:
            continue
        try:
            plugin = importlib.import_module(modname)
        except Exception as exc:  # e.g. an optional dependency is missing: the rest still works
            failed[modname] = f"{type(exc).__name__}: {exc}"
            _report_failure(modname, modname, exc)
            continue
        pm.register(plugin, name=modname)
        dists[modname] = None

    if entry_points:
        for ep in importlib.metadata.entry_points(group=PROJECT_NAME):
            seen.add(ep.name)
            if ep.name in disabled or pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not take the rest down
                failed[ep.name] = f"{type(exc).__name__}: {exc}"
                _report_failure(ep.name, ep.value, exc)
                continue
            pm.register(plugin, name=ep.name)
            dists[ep.name] = ep.dist

    for modname in extra:
        modname = str(modname)
        if modname in disabled or pm.has_plugin(modname):
            continue
        try:
            plugin = importlib.import_module(modname)
        except Exception as exc:
            raise ConfigError(
                f"The plugin module '{modname}' could not be imported: {type(exc).__name__}: {exc}",
                where="plugins (cfg.plugins)",
                hint="check the dotted module path and that its package is installed "
                "(or on PYTHONPATH).",
            ) from exc
        pm.register(plugin, name=modname)
        dists[modname] = None

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(
            f"A plugin implements a hook that tunesmith does not have: {exc}",
            where="framework/hookspecs.py lists the hooks",
            hint="fix the hook name (all hooks start with 'tunesmith_').",
        ) from exc

    seen.update(str(m) for m in extra)
    for name in sorted(disabled - seen):
        _say(
            f"{DISABLE_ENV} names '{name}', but no plugin has that name.{did_you_mean(name, seen)}"
        )

    manager = TunesmithPluginManager(pm=pm, failed=failed)
    for impl in pm.hook.tunesmith_provides.get_hookimpls():
        try:
            provided = impl.function() or {}
        except Exception as exc:  # its names cannot be known: leave the plugin out
            failed[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
            _report_failure(impl.plugin_name, "tunesmith_provides()", exc)
            pm.unregister(name=impl.plugin_name)
            continue
        package = _package_of(impl.plugin, dists.get(impl.plugin_name))
        for stage, names in provided.items():
            for name in names:
                manager.served.setdefault(stage, {}).setdefault(name, []).append(
                    Provider(plugin=impl.plugin_name, package=package)
                )
    return manager

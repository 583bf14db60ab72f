"""The plugin manager: in-tree plugins, the ``tunesmith`` entry-point group, and ``cfg.plugins``.

Plugins come from three places, registered in this order:

1. the in-tree modules listed in :data:`INTREE_PLUGINS`;
2. every installed package that declares the entry-point group ``tunesmith``;
3. the dotted module paths in ``cfg.plugins`` (``plugins=[my_pkg.my_plugin]``).

Setting ``TUNESMITH_DISABLE_PLUGINS=name1,name2`` skips plugins by name (the entry-point
name, or the module path for in-tree and ``cfg.plugins`` modules).

What each plugin serves comes from its ``tunesmith_provides`` descriptors
(:mod:`framework.descriptors`); the manager keeps them per stage key, and the core asks
:meth:`TunesmithPluginManager.describe` instead of guessing from a name. A broken in-tree or
installed plugin (import error, unknown hook, bad signature, a ``tunesmith_*`` function
without ``@hookimpl``, bad descriptors) is reported and left out; the rest keeps working. A
module named in ``cfg.plugins`` was asked for explicitly: anything wrong with it is an error.

:meth:`TunesmithPluginManager.require_all` checks every name a run picks at once (the
pipeline calls it at start-up); :meth:`TunesmithPluginManager.file_type` picks a data
file's type by its longest registered suffix; :meth:`TunesmithPluginManager.code_digest`
hashes the code (packages and versions) behind some hooks, for cache keys.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from framework import PROJECT_NAME, hookspecs
from framework.descriptors import Provided, Stage, as_descriptors, stage_key
from framework.errors import ConfigError, TunesmithError, did_you_mean

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
    "plugins.metrics.diversity",
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
    "plugins.board",
    "plugins.metrics.lm_eval_tasks",
    "plugins.objectives.dpo",
    "plugins.objectives.orpo",
    "plugins.objectives.simpo",
    "plugins.objectives.kto",
    "plugins.formats.kto",
    "plugins.metrics.preference",
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
    """One plugin serving one name: which plugin, which installed package, what it declared."""

    plugin: str
    package: str
    info: Provided | None = None
    dist: importlib.metadata.Distribution | None = field(default=None, repr=False, compare=False)


class PluginLoadError(TunesmithError):
    """A plugin module that cannot be used (raised for ``cfg.plugins``; others are skipped)."""


@dataclass
class TunesmithPluginManager:
    """A pluggy manager plus the table of what each stage key serves."""

    pm: pluggy.PluginManager
    served: dict[str, dict[str, list[Provider]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    #: Plugins left out by TUNESMITH_DISABLE_PLUGINS -> how to load them (only to tell the
    #: user which disabled plugin serves a name they asked for).
    disabled_loaders: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Plugin name -> the distribution it came from (``None``: in-tree or cfg.plugins).
    dists: dict[str, importlib.metadata.Distribution | None] = field(default_factory=dict)
    _callers: dict[tuple[str, str, str], Any] = field(default_factory=dict, repr=False)

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    def names(self, stage: str) -> list[str]:
        """The names served for ``stage``, sorted."""
        return sorted(self.served.get(stage, {}))

    def describe(self, stage: str, name: str) -> Provided | None:
        """What the plugin serving ``name`` for ``stage`` declared (the last registered
        plugin answers first, as with hooks), or ``None`` when nobody serves it."""
        providers = self.served.get(stage, {}).get(name)
        if not providers:
            return None
        return providers[-1].info

    def providers(self, stage: str, name: str) -> list[Provider]:
        """Every plugin serving ``name`` for ``stage``, in registration order."""
        return list(self.served.get(stage, {}).get(name, []))

    def caller(self, hook: str, stage: str, name: str) -> Any:
        """The hook ``hook`` calling only the plugins that serve ``name`` for ``stage`` (and any
        plugin wrapping the hook), for hooks called once per record or example.

        Same answers as ``self.hook.<hook>(name=name, ...)`` when, as the contract asks, only
        a plugin declaring ``name`` answers for it; the other plugins' implementations are not
        run just to return ``None``. Nobody declaring ``name`` (a plugin written for the first
        contract without declarations): the whole hook.
        """
        key = (hook, stage, name)
        if key not in self._callers:
            serving = {p.plugin for p in self.providers(stage, name)}
            if not serving:
                self._callers[key] = getattr(self.pm.hook, hook)
            else:
                keep = serving | {
                    impl.plugin_name
                    for impl in getattr(self.pm.hook, hook).get_hookimpls()
                    if impl.wrapper or impl.hookwrapper
                }
                others = [p for n, p in self.pm.list_name_plugin() if n not in keep]
                self._callers[key] = self.pm.subset_hook_caller(hook, remove_plugins=others)
        return self._callers[key]

    def sessions(self) -> set[str]:
        """The session stages (used without changing a run: ``chat``, ``serve``)."""
        return {
            name
            for name in self.names("stage")
            if isinstance(info := self.describe("stage", name), Stage) and info.session
        }

    def run_stage(self, name: str, run: Any) -> None:
        """Run the stage ``name``: its descriptor's ``run``, else the ``tunesmith_run_stage``
        hook (plugins written for the first contract)."""
        self.require("stage", name)
        info = self.describe("stage", name)
        if isinstance(info, Stage) and info.run is not None:
            info.run(run)
            return
        if not self.hook.tunesmith_run_stage(name=name, run=run):
            raise TunesmithError(
                f"The plugin serving stage '{name}' did not run it.",
                where="stages",
                hint="its Stage descriptor needs run=<function>, or its tunesmith_run_stage "
                "hook must return True for this name.",
            )

    def require(self, stage: str, name: str) -> None:
        """Raise :class:`ConfigError` unless some plugin serves ``name`` for ``stage``."""
        table = self.served.get(stage, {})
        if name in table:
            return
        where = STAGE_KEYS.get(stage, stage)
        off = [p for p in sorted(self.disabled_loaders) if (stage, name) in self._served_by(p)]
        if off:
            raise ConfigError(
                f"{stage} '{name}' is served by the plugin {', '.join(off)}, which is disabled "
                f"by {DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')}.",
                where=where,
                hint=f"remove {', '.join(off)} from {DISABLE_ENV}, or pick another {stage}: "
                f"{', '.join(sorted(table)) or '(none)'}.",
            )
        listing = (
            "\n".join(
                f"    {n:<16} from {', '.join(f'{p.plugin} ({p.package})' for p in provs)}"
                for n, provs in sorted(table.items())
            )
            or "    (none)"
        )
        notes = ""
        if self.failed:
            notes += "\n  plugins that failed to load: " + ", ".join(
                f"{k} ({v.splitlines()[0]})" for k, v in self.failed.items()
            )
        if self.disabled_loaders:
            notes += f"\n  plugins disabled by {DISABLE_ENV}: " + ", ".join(
                sorted(self.disabled_loaders)
            )
        raise ConfigError(
            f"No plugin serves {stage} '{name}'.{did_you_mean(name, table)}\n"
            f"  served names for {stage}:\n{listing}{notes}",
            where=where,
            hint=f"pick one of the names above, or install/list a plugin that serves '{name}'.",
        )

    def require_all(self, wanted: Iterable[tuple[str, str, str]]) -> None:
        """Check many names at once; one :class:`ConfigError` lists every name nobody serves.

        Args:
            wanted: ``(stage key, name, config key)`` triples, e.g.
                ``("metric", "wer", "evaluator.metrics[1]")``. A ``file`` name is a file
                name (or path): it is served when a registered :class:`FileType` suffix
                ends it (see :meth:`file_type`).

        Raises:
            ConfigError: one name is not served (the full message of :meth:`require`), or
                several are (one line each, with near matches and disabled plugins).
        """
        problems: list[tuple[str, str, ConfigError]] = []
        seen: set[tuple[str, str]] = set()
        for stage, name, where in wanted:
            if (stage, name) in seen:
                continue
            seen.add((stage, name))
            try:
                if stage == "file":
                    self.require_file(name, where=where)
                else:
                    self.require(stage, name)
            except ConfigError as exc:
                problems.append((stage, where, exc))
        if not problems:
            return
        if len(problems) == 1:
            _, where, exc = problems[0]
            raise ConfigError(exc.what, where=where, hint=exc.hint)
        lines = []
        for stage, where, exc in problems:
            first = exc.what.splitlines()[0]
            served = ", ".join(self.names(stage)) or "(none)"
            lines.append(f"  - {where}: {first} (served: {served})")
        raise ConfigError(
            f"{len(problems)} names in the config are not served by any plugin "
            "(nothing was run):\n" + "\n".join(lines),
            where=", ".join(where for _, where, _ in problems),
            hint="fix the names above; `python run.py plugins` lists every served name and "
            "the plugin serving it.",
        )

    def file_type(self, filename: str | Path) -> str | None:
        """The :class:`FileType` that reads ``filename``: the longest registered suffix the
        file name ends with (``.qa.txt`` before ``.txt``; case does not matter), or ``None``."""
        return _longest_suffix(Path(str(filename)).name, self.served.get("file", {}))

    def require_file(self, filename: str | Path, where: str = "data.path") -> str:
        """The file type of ``filename`` (:meth:`file_type`); a :class:`ConfigError` when
        no plugin reads such files (naming the disabled plugin that would)."""
        found = self.file_type(filename)
        if found is not None:
            return found
        name = Path(str(filename)).name
        off = {
            suffix
            for plugin in self.disabled_loaders
            for key, suffix in self._served_by(plugin)
            if key == "file"
        }
        suffix = _longest_suffix(name, off)
        if suffix is not None:
            self.require("file", suffix)  # raises: names the disabled plugin
        last = Path(name).suffix
        served = self.names("file")
        raise ConfigError(
            f"No plugin reads files like '{name}' "
            f"({f'suffix {last}' if last else 'no suffix'}).{did_you_mean(last, served)}",
            where=where,
            hint=f"give a file with one of the suffixes {', '.join(served) or '(none)'}, or "
            "install a plugin whose tunesmith_provides declares FileType('<suffix>').",
        )

    def code_digest(self, hooks: Iterable[str], modules: Iterable[str] = ()) -> str:
        """A hash of the code behind ``hooks``, for cache keys.

        For every plugin implementing one of ``hooks``: the name and version of the
        distribution it was installed with (if any), and the source of every ``.py`` file
        of its package -- the top-level package of an installed or ``cfg.plugins`` plugin,
        the subpackage of an in-tree one (``plugins/formats/`` for
        ``plugins.formats.alpaca``) -- so editing a helper module the hook implementation
        imports changes the digest too. ``modules`` names further modules to hash (the
        core modules the stage itself uses); each is read from its file, imported or not.

        Args:
            hooks: hook names (``tunesmith_encode_example``...).
            modules: dotted module names.

        Returns:
            A hex digest.
        """
        parts: dict[str, str] = {}
        for hook_name in sorted(set(hooks)):
            caller = getattr(self.pm.hook, hook_name, None)
            if caller is None:
                continue
            for impl in caller.get_hookimpls():
                dist = self.dists.get(impl.plugin_name)
                label = f"dist {dist.metadata['Name']} {dist.version}" if dist else ""
                package, digest = _package_digest(impl.plugin)
                parts[f"package {package}"] = digest
                if label:
                    parts[f"dist {impl.plugin_name}"] = label
        for module in sorted(set(modules)):
            path = _module_file(module)
            parts[f"module {module}"] = _file_text(path) if path else module
        h = hashlib.sha256()
        for key in sorted(parts):
            h.update(f"{key}\0{parts[key]}\0".encode())
        return h.hexdigest()

    def _served_by(self, plugin: str) -> set[tuple[str, str]]:
        """What the disabled ``plugin`` would serve (loaded on demand, never registered)."""
        try:
            module = self.disabled_loaders[plugin]()
            return {(stage_key(d), d.name) for d in _descriptors_of(module)}
        except Exception:  # a disabled plugin may well be broken: that is why it is off
            return set()


def _longest_suffix(filename: str, suffixes: Iterable[str]) -> str | None:
    lowered = filename.lower()
    matching = [s for s in suffixes if s and lowered.endswith(s.lower()) and len(s) < len(lowered)]
    return max(matching, key=len, default=None)


def _module_file(name: str) -> Path | None:
    """The source file of the module ``name`` (without importing it), or ``None``."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or not str(origin).endswith(".py"):
        return None
    return Path(origin)


def _file_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"<unreadable {path}>"


def _package_digest(plugin: object) -> tuple[str, str]:
    """``(package, digest of the source of every .py file in it)`` for ``plugin``'s package.

    The package is the plugin module's top-level package; for an in-tree plugin
    (``plugins.<sub>.<module>``) the subpackage ``plugins.<sub>``. A plugin module outside
    any package (or ``plugins.<module>``) stands alone: its own file.
    """
    modname = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
    parts = modname.split(".")
    top = ".".join(parts[:2]) if parts[0] == "plugins" else parts[0]
    package = sys.modules.get(top)
    if package is None:
        try:
            package = importlib.import_module(top)
        except Exception:  # cannot happen for a registered plugin; hash what we have
            package = None
    roots = [Path(p) for p in getattr(package, "__path__", [])] if package is not None else []
    h = hashlib.sha256()
    if not roots:  # a plain module (or a package we could not look into): its own file
        own = _module_file(modname)
        h.update((_file_text(own) if own else modname).encode())
        return modname, h.hexdigest()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" not in path.parts:
                h.update(f"{path.relative_to(root).as_posix()}\0{_file_text(path)}\0".encode())
    return top, h.hexdigest()


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


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


_IMPL_ATTR = f"{PROJECT_NAME}_impl"
_SPEC_NAMES = frozenset(n for n in dir(hookspecs) if n.startswith("tunesmith_"))


def check_plugin(plugin: object) -> None:
    """Check a plugin's hook implementations against the hook specs before registering it.

    Raises:
        PluginLoadError: an implementation names a hook that does not exist (with the
            nearest real hook), takes an argument its hook does not pass, or is a
            ``tunesmith_*`` function of the module without ``@hookimpl`` (pluggy would
            silently ignore it).
    """
    module_name = getattr(plugin, "__name__", None)
    for attr in dir(plugin):
        func = getattr(plugin, attr, None)
        if not callable(func):
            continue
        if getattr(func, _IMPL_ATTR, None) is None:
            if (
                attr.startswith(f"{PROJECT_NAME}_")
                and inspect.isfunction(func)
                and func.__module__ == module_name
            ):
                raise PluginLoadError(
                    f"it defines '{attr}' without @hookimpl, so it would never be called "
                    "(decorate it: from framework import hookimpl)."
                )
            continue
        hook_name = (getattr(func, _IMPL_ATTR) or {}).get("specname") or attr
        if hook_name not in _SPEC_NAMES:
            raise PluginLoadError(
                f"it implements '{hook_name}', which is not a tunesmith hook."
                f"{did_you_mean(hook_name, _SPEC_NAMES)}"
            )
        spec_args = set(inspect.signature(getattr(hookspecs, hook_name)).parameters)
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            continue
        extra = [
            n
            for n, p in params.items()
            if n not in spec_args
            and p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if extra:
            raise PluginLoadError(
                f"its '{hook_name}' takes {', '.join(repr(e) for e in extra)}, which the hook "
                f"does not pass (it passes: {', '.join(sorted(spec_args))})."
            )


def _descriptors_of(plugin: object) -> list[Provided]:
    """What ``plugin``'s ``tunesmith_provides`` declares.

    Raises:
        PluginLoadError: it raised, or returned something that is not descriptors.
    """
    provides = getattr(plugin, "tunesmith_provides", None)
    if provides is None or getattr(provides, _IMPL_ATTR, None) is None:
        return []
    try:
        return as_descriptors(provides())
    except Exception as exc:
        raise PluginLoadError(
            f"its tunesmith_provides failed: {type(exc).__name__}: {exc}".rstrip(".") + "."
        ) from exc


class _Loader:
    """Registers plugins one by one; reports and skips the broken ones."""

    def __init__(self, manager: TunesmithPluginManager, disabled: set[str]) -> None:
        self.manager = manager
        self.disabled = disabled
        self.seen: set[str] = set()

    def skip_disabled(self, name: str, load: Any) -> bool:
        """Whether ``name`` is disabled; if so, keep a way to learn what it would serve."""
        self.seen.add(name)
        if name not in self.disabled:
            return False
        self.manager.disabled_loaders[name] = load
        return True

    def add(
        self,
        name: str,
        plugin: object,
        source: str,
        dist: importlib.metadata.Distribution | None,
        strict: bool,
    ) -> bool:
        """Check, register and read the descriptors of ``plugin``; ``False`` if left out."""
        manager = self.manager
        if manager.pm.is_registered(plugin):  # e.g. cfg.plugins names an installed plugin
            log.debug(
                "plugin '%s' is already registered as '%s'", name, manager.pm.get_name(plugin)
            )
            return False
        try:
            check_plugin(plugin)
            infos = _descriptors_of(plugin)
            manager.pm.register(plugin, name=name)
        except Exception as exc:  # whatever is wrong with it, the rest keeps working
            self.fail(name, source, dist, exc, strict)
            return False
        manager.dists[name] = dist
        package = _package_of(plugin, dist)
        for info in infos:
            manager.served.setdefault(stage_key(info), {}).setdefault(info.name, []).append(
                Provider(plugin=name, package=package, info=info, dist=dist)
            )
        return True

    def fail(
        self,
        name: str,
        source: str,
        dist: importlib.metadata.Distribution | None,
        exc: BaseException,
        strict: bool,
    ) -> None:
        what = str(exc) if isinstance(exc, PluginLoadError) else f"{type(exc).__name__}: {exc}"
        what = what.strip()
        if not what.endswith((".", "?")):
            what += "."
        origin = f"entry point '{name} = {source}'" if dist is not None else f"module '{source}'"
        package = f" of {dist.metadata['Name']} {dist.version}" if dist is not None else ""
        if strict:
            raise ConfigError(
                f"The plugin module '{name}' cannot be used: {what}",
                where="plugins (cfg.plugins)",
                hint="fix the module (hook names start with 'tunesmith_' and are listed in "
                "framework/hookspecs.py), or remove it from plugins=[...].",
            ) from exc
        self.manager.failed[name] = what
        _say(
            f"plugin '{name}' ({origin}{package}) is broken and is left out: {what} "
            f"The other plugins work; to silence this, fix or uninstall it, or set "
            f"{DISABLE_ENV}={name}."
        )


def build_plugin_manager(
    extra: Iterable[str] = (), entry_points: bool = True
) -> TunesmithPluginManager:
    """Build the plugin manager for a run.

    Args:
        extra: dotted module paths from ``cfg.plugins``.
        entry_points: whether to load the ``tunesmith`` entry-point group.

    Returns:
        The manager, with every working plugin registered and the served-names table filled in.

    Raises:
        ConfigError: a module in ``extra`` cannot be imported or used (an unknown hook, a bad
            signature, bad descriptors). In-tree and installed plugins with such faults are
            reported and skipped instead.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    manager = TunesmithPluginManager(pm=pm)
    disabled = _disabled()
    loader = _Loader(manager, disabled)

    for modname in INTREE_PLUGINS:
        if loader.skip_disabled(modname, lambda m=modname: importlib.import_module(m)):
            continue
        try:
            plugin = importlib.import_module(modname)
        except (Exception, SystemExit) as exc:  # e.g. a missing optional dependency
            loader.fail(modname, modname, None, exc, strict=False)
            continue
        loader.add(modname, plugin, modname, None, strict=False)

    if entry_points:
        for ep in importlib.metadata.entry_points(group=PROJECT_NAME):
            if pm.has_plugin(ep.name) or ep.name in manager.failed:
                continue
            if loader.skip_disabled(ep.name, ep.load):
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # must not take the rest down
                loader.fail(ep.name, ep.value, ep.dist, exc, strict=False)
                continue
            loader.add(ep.name, plugin, ep.value, ep.dist, strict=False)

    for modname in extra:
        modname = str(modname)
        if pm.has_plugin(modname) or loader.skip_disabled(
            modname, lambda m=modname: importlib.import_module(m)
        ):
            continue
        try:
            plugin = importlib.import_module(modname)
        except (Exception, SystemExit) as exc:
            raise ConfigError(
                f"The plugin module '{modname}' could not be imported: {type(exc).__name__}: {exc}",
                where="plugins (cfg.plugins)",
                hint="check the dotted module path and that its package is installed "
                "(or on PYTHONPATH).",
            ) from exc
        loader.add(modname, plugin, modname, None, strict=True)

    for name in sorted(disabled - loader.seen):
        _say(
            f"{DISABLE_ENV} names '{name}', but no plugin has that name."
            f"{did_you_mean(name, loader.seen)}"
        )
    return manager

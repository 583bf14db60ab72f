"""``python run.py plugins``: every stage, the names served for it, and who serves each.

Also lists the config options that plugin packages add to the groups (entry-point group
``tunesmith.conf``), the plugins switched off by ``TUNESMITH_DISABLE_PLUGINS`` and the ones
that failed to load. It builds the plugin manager exactly as a run does, without Hydra.

    python run.py plugins                         # the table
    python run.py plugins --json                  # the same, for programs
    python run.py plugins --with my_pkg.plugin    # include a cfg.plugins module
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from framework.errors import TunesmithError


def collect(extra: Sequence[str] = ()) -> dict[str, Any]:
    """What the listing shows, as plain data.

    Args:
        extra: dotted module paths, as ``cfg.plugins`` would give them.

    Returns:
        ``{"stages": [{"stage", "config_key", "names": [{"name", "providers": [{"plugin",
        "package", "description", "declared"}]}]}], "config_packages": [...],
        "disabled": [...], "failed": {...}}``; ``declared`` holds the descriptor's fields
        (a metric's ``higher_is_better``, a method's ``kind``, an objective's ``options``...).
    """
    from framework.manager import STAGE_KEYS, build_plugin_manager
    from framework.plugin_conf import config_packages, disabled_names

    manager = build_plugin_manager(extra=list(extra))
    stages = list(STAGE_KEYS) + sorted(set(manager.served) - set(STAGE_KEYS))
    return {
        "stages": [
            {
                "stage": stage,
                "config_key": STAGE_KEYS.get(stage, ""),
                "names": [
                    {
                        "name": name,
                        "providers": [
                            {
                                "plugin": p.plugin,
                                "package": p.package,
                                "description": p.info.description if p.info else "",
                                "declared": p.info.metadata() if p.info else {},
                            }
                            for p in manager.served.get(stage, {})[name]
                        ],
                    }
                    for name in manager.names(stage)
                ],
            }
            for stage in stages
        ],
        "config_packages": [
            {"name": c.name, "package": c.package, "dist": c.dist, "options": c.options}
            for c in config_packages(with_options=True)
        ],
        "disabled": sorted(disabled_names()),
        "failed": dict(manager.failed),
    }


def declared_text(declared: dict[str, Any]) -> str:
    """A descriptor's fields in a few words: ``higher is better``, ``kind=adapter``..."""
    parts: list[str] = []
    for key, value in declared.items():
        if key == "higher_is_better":
            parts.append(
                "direction not declared"
                if value is None
                else ("higher is better" if value else "lower is better")
            )
        elif key == "run" or value in (None, (), [], {}, "") or value is False:
            continue
        elif isinstance(value, dict):
            parts.append(f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        elif isinstance(value, list):
            parts.append(f"{key}: {', '.join(str(v) for v in value)}")
        elif value is True:
            parts.append(key)
        else:
            parts.append(f"{key}={value}")
    return "; ".join(parts)


def render(data: dict[str, Any]) -> None:
    """Print the listing as tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title="tunesmith plugins: the names each stage serves, and who serves them")
    for col in ("stage", "picked by", "name", "declared", "plugin", "package"):
        table.add_column(col, overflow="fold")
    for entry in data["stages"]:
        first = True
        for named in entry["names"] or [{"name": "(none)", "providers": [{}]}]:
            for i, prov in enumerate(named["providers"]):
                note = " (also served above: the last registered answers first)" if i else ""
                cells = (
                    entry["stage"] if first else "",
                    entry["config_key"] if first else "",
                    named["name"] if i == 0 else "",
                    declared_text(prov.get("declared") or {}),
                    prov.get("plugin", "") + note,
                    prov.get("package", ""),
                )
                table.add_row(*[escape(c) for c in cells])
                first = False
        table.add_section()
    console.print(table)
    packages = data["config_packages"]
    if packages:
        conf = Table(title="config options added by plugin packages (entry points tunesmith.conf)")
        for col in ("plugin", "package", "from", "options"):
            conf.add_column(col)
        for c in packages:
            options = ", ".join(
                o.replace("/", "=", 1) if o.count("/") == 1 else o for o in c["options"]
            )
            cells = (c["name"], f"pkg://{c['package']}", c["dist"], options or "(none)")
            conf.add_row(*[escape(x) for x in cells])
        console.print(conf)
    else:
        console.print("config options added by plugin packages: none")
    disabled = ", ".join(data["disabled"]) or "none"
    console.print(f"disabled by TUNESMITH_DISABLE_PLUGINS: {disabled}", markup=False)
    for name, why in data["failed"].items():
        console.print(f"failed to load: {name}: {why}", soft_wrap=True, markup=False)


def main(argv: Sequence[str] | None = None) -> int:
    """List the plugins; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python run.py plugins",
        description="List every stage, the names served for it and which plugin/package "
        "serves each; the config options plugin packages add; disabled and broken plugins.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        metavar="MODULE",
        help="also register this plugin module, as plugins=[MODULE] would (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        data = collect(args.extra)
    except TunesmithError as err:
        print(f"error: {err.format()}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

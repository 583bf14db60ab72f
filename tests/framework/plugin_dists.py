"""Make installed plugin distributions on the fly, as ``pip install`` leaves them.

An installed distribution is its package plus a ``<name>-<version>.dist-info`` folder with
``METADATA`` and ``entry_points.txt``, side by side in a directory on ``sys.path`` (or
``PYTHONPATH`` for a subprocess): exactly what importlib.metadata reads.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap
from pathlib import Path


def install_dist(
    site: Path,
    dist: str,
    version: str,
    files: dict[str, str],
    entry_points: dict[str, str],
) -> Path:
    """Write a distribution into ``site`` and return ``site``.

    Args:
        site: the directory standing for site-packages.
        dist: the distribution name (``ts-broken``).
        version: its version.
        files: relative path -> source (dedented), e.g. ``{"ts_pkg/__init__.py": ""}``.
        entry_points: entry-point name -> value for the ``tunesmith`` group.
    """
    site.mkdir(parents=True, exist_ok=True)
    for old in site.glob(f"{dist.replace('-', '_')}-*.dist-info"):
        shutil.rmtree(old)  # a re-install (a new version) replaces the old metadata
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tunesmith]\n{lines}", encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")
    importlib.invalidate_caches()
    return site


def forget(*packages: str) -> None:
    """Drop ``packages`` (and their submodules) from ``sys.modules`` so they import afresh."""
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in packages):
            del sys.modules[name]
    importlib.invalidate_caches()

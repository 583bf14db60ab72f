"""tunesmith: the ``tunesmith`` command, and the public import for plugins.

A plugin may import either name; both give the same objects::

    from framework import hookimpl, Metric     # as the code in this repository does
    from tunesmith import hookimpl, Metric     # the same, under the distribution's name

Installed from a wheel (``pip install .``), the core and the in-tree plugins live inside
this package, laid out as in a checkout: ``tunesmith/_root/{framework,plugins,conf,data}``.
So site-packages gets no top-level ``framework`` or ``plugins`` package (names other software
uses too). Importing ``tunesmith`` (the ``tunesmith`` command does) puts that root first on
``sys.path`` and on ``PYTHONPATH``, for the processes a run starts (sweep workers, cluster
jobs): inside tunesmith, ``framework`` and ``plugins`` are always tunesmith's own. In a
checkout, or an editable install, the root is the checkout itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _find_root() -> Path:
    """The folder holding ``framework/``, ``plugins/`` and ``conf/``: ``_root`` inside an
    installed wheel, else the checkout this package sits in."""
    here = Path(__file__).resolve().parent
    for root in (here / "_root", here.parent):
        if (root / "framework" / "hookspecs.py").is_file():
            return root
    raise ImportError(f"tunesmith's core (framework/) is not installed next to {here}")


#: Where ``framework/``, ``plugins/``, ``conf/`` and the demo ``data/`` are.
ROOT = _find_root()


def _activate(root: Path) -> None:
    """Make ``framework`` and ``plugins`` importable from ``root``, here and in child processes."""
    entry = str(root)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if entry not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([entry, *paths])


_activate(ROOT)

from framework import (  # noqa: E402
    PROJECT_NAME,
    DataFormat,
    ExportFormat,
    FileType,
    Method,
    Metric,
    ModelSource,
    Objective,
    Score,
    Stage,
    hookimpl,
    hookspec,
)


def main() -> None:
    """The ``tunesmith`` console command: the same as ``python run.py`` in a checkout."""
    from framework.cli import main as cli_main

    cli_main()


__all__ = [
    "PROJECT_NAME",
    "ROOT",
    "DataFormat",
    "ExportFormat",
    "FileType",
    "Method",
    "Metric",
    "ModelSource",
    "Objective",
    "Score",
    "Stage",
    "hookimpl",
    "hookspec",
    "main",
]

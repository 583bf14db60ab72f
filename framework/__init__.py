"""tunesmith's core: hook specs, plugin manager, pipeline, Lightning module and data module.

A plugin needs only::

    from framework import hookimpl            # and the descriptors it declares:
    from framework import Metric, Method, Objective, Stage, ...

Importing this package is cheap (no torch): heavy libraries load when a stage needs them.
"""

from __future__ import annotations

import os

import pluggy

PROJECT_NAME = "tunesmith"

# Offline by design: models and data come from local paths or installed packages, never a hub.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in logs

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

# What plugins declare in tunesmith_provides (plain dataclasses: cheap to import).
from framework.descriptors import (  # noqa: E402
    DataFormat,
    ExportFormat,
    FileType,
    Method,
    Metric,
    ModelSource,
    Note,
    Objective,
    Score,
    Stage,
)

__all__ = [
    "PROJECT_NAME",
    "DataFormat",
    "ExportFormat",
    "FileType",
    "Method",
    "Metric",
    "ModelSource",
    "Note",
    "Objective",
    "Score",
    "Stage",
    "hookimpl",
    "hookspec",
]

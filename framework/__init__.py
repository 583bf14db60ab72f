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

# The user's Hugging Face environment is theirs: HF_HUB_OFFLINE, HF_ENDPOINT (a mirror such as
# https://hf-mirror.com), HF_HOME and HF_TOKEN are honoured and never set here. Local model
# folders and the embedded model never touch the network; a Hub id (model=hf
# model.path=org/name) is downloaded into the standard cache when the environment allows it
# (framework.model.loading.resolve_model_path, with its own progress bar).
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
#: Set when the quiet default below is tunesmith's, not the user's (seen by child processes too):
#: a model download then still shows its progress bar.
HF_PROGRESS_DEFAULT_ENV = "TUNESMITH_HF_PROGRESS_DEFAULT"
if "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # no "Loading weights" bars in run logs
    os.environ[HF_PROGRESS_DEFAULT_ENV] = "1"

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

"""tunesmith's core: hook specs, plugin manager, pipeline, Lightning module and data module.

A plugin needs only::

    from framework import hookimpl

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

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

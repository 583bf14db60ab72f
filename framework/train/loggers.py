"""Logger factories for the ``logger`` group, where a library needs a little help."""

from __future__ import annotations

import os
from typing import Any


def mlflow_file_store(**kwargs: Any) -> Any:
    """A ``lightning.pytorch.loggers.MLFlowLogger`` that writes to a local file store.

    MLflow 3 refuses a ``file:`` tracking URI unless ``MLFLOW_ALLOW_FILE_STORE=true``; a run
    directory store needs no server and no database, so tunesmith opts in (a value already
    set in the environment wins).

    Args:
        kwargs: ``MLFlowLogger`` arguments (``tracking_uri="file:..."``, ``experiment_name``...).
    """
    from lightning.pytorch.loggers import MLFlowLogger

    if str(kwargs.get("tracking_uri", "")).startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(**kwargs)

"""Which process this is, when Lightning runs one process per device (``trainer=ddp``...).

Lightning's DDP launcher starts the other processes by re-running the same command
(``python run.py ...`` with ``LOCAL_RANK`` set). Those processes must join training only:
the process of global rank 0 prepares the data before training, and saves, evaluates and
exports after it.
"""

from __future__ import annotations

import os

#: Stages that every process runs under a multi-process strategy (the others: rank 0 only).
EVERY_RANK_STAGES: frozenset[str] = frozenset({"train"})

_RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's global rank, read from the environment the way Lightning reads it."""
    for key in _RANK_VARS:
        value = os.environ.get(key)
        if value:
            return int(value)
    return 0


def is_global_zero() -> bool:
    """Whether this process is the one that writes the run's files (global rank 0)."""
    return global_rank() == 0

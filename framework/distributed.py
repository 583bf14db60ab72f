"""Which process this is, when Lightning runs one process per device (``trainer=ddp``...).

Lightning's DDP launcher starts the other processes of a node by re-running the same command
(``python run.py ...`` with ``LOCAL_RANK`` set). On a cluster, each node's first process is
started by the scheduler with the node's index in ``NODE_RANK`` (``GROUP_RANK`` under
torchelastic), or with a global rank (``RANK``, ``SLURM_PROCID``). Every process other than
global rank 0 joins training only: the process of global rank 0 prepares the data before
training, and saves, evaluates and exports after it.
"""

from __future__ import annotations

import os

#: Stages that every process runs under a multi-process strategy (the others: rank 0 only).
EVERY_RANK_STAGES: frozenset[str] = frozenset({"train"})

#: A rank over every process of every node (torchelastic/torchrun, SLURM, LSF).
_GLOBAL_RANK_VARS = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
#: The node's index: Lightning's own environment (NODE_RANK) and torchelastic (GROUP_RANK).
_NODE_RANK_VARS = ("NODE_RANK", "GROUP_RANK")


def _first_int(keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = os.environ.get(key)
        if value:
            return int(value)
    return None


def global_rank() -> int | None:
    """This process's global rank, or None when only a node and a local rank are known.

    ``NODE_RANK=1`` with ``LOCAL_RANK=0`` is global rank ``1 * processes per node``, which
    only the Trainer knows (``trainer.devices``); it is certainly not 0.
    """
    rank = _first_int(_GLOBAL_RANK_VARS)
    if rank is not None:
        return rank
    node, local = _first_int(_NODE_RANK_VARS) or 0, _first_int(("LOCAL_RANK",)) or 0
    return local if node == 0 else None


def is_global_zero() -> bool:
    """Whether this process is the one that writes the run's files (global rank 0)."""
    return global_rank() == 0


def worker_hydra_overrides() -> list[str]:
    """Hydra overrides that keep a process other than global rank 0 from writing the run's
    files: no ``.hydra/`` copy of the config, and a log file of its own.

    Lightning gives the processes it starts on a node the same kind of overrides
    (``hydra.output_subdir=null``); the first process of every other node is started by the
    cluster with the user's own command, and gets them here.
    """
    if is_global_zero():
        return []
    rank = global_rank()
    if rank is not None:
        name = f"train_rank{rank}"
    else:
        node, local = _first_int(_NODE_RANK_VARS) or 0, _first_int(("LOCAL_RANK",)) or 0
        name = f"train_node{node}_process{local}"
    return ["hydra.output_subdir=null", f"hydra.job.name={name}"]

"""OmegaConf resolvers used by tunesmith's configs (registered before Hydra composes)."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

#: The folder holding framework/, plugins/, conf/ and the demo data/: the checkout, or inside
#: an installed wheel ``site-packages/tunesmith/_root`` (setup.py). Only tunesmith's own files
#: are found from here; a run's outputs and a user's relative data paths are taken from the
#: current directory (conf/paths/default.yaml).
ROOT_DIR = Path(__file__).resolve().parent.parent


#: Longer run-directory suffixes are cut and given a hash of the whole (file names: 255 bytes).
MAX_SUFFIX = 150


def _suffix(override_dirname: str) -> str:
    """``"__a=1,b=2"`` for a non-empty override string, ``""`` otherwise; path-safe."""
    if not override_dirname:
        return ""
    suffix = "__" + override_dirname.replace("/", "-")
    if len(suffix.encode()) > MAX_SUFFIX:
        import hashlib

        digest = hashlib.sha256(suffix.encode()).hexdigest()[:8]
        suffix = suffix.encode()[: MAX_SUFFIX - 9].decode(errors="ignore") + "-" + digest
    return suffix


def command() -> str:
    """How the user starts tunesmith, for help texts: ``python run.py`` in a checkout, else
    ``tunesmith`` (the installed command, or ``python -m tunesmith``)."""
    return "python run.py" if Path(sys.argv[0]).name == "run.py" else "tunesmith"


def _sweep_name() -> str:
    from framework.sweep.jobs import sweep_name

    return sweep_name()


def register_resolvers() -> None:
    """Register ``ts.root`` (:data:`ROOT_DIR`), ``ts.suffix`` (run dir suffix),
    ``ts.sweep_name`` (multirun dir name, cached so every job of a sweep agrees) and
    ``ts.command`` (:func:`command`); idempotent."""
    if not OmegaConf.has_resolver("ts.root"):
        OmegaConf.register_new_resolver("ts.root", lambda: str(ROOT_DIR))
    if not OmegaConf.has_resolver("ts.suffix"):
        OmegaConf.register_new_resolver("ts.suffix", _suffix)
    if not OmegaConf.has_resolver("ts.sweep_name"):
        OmegaConf.register_new_resolver("ts.sweep_name", _sweep_name, use_cache=True)
    if not OmegaConf.has_resolver("ts.command"):
        OmegaConf.register_new_resolver("ts.command", command)

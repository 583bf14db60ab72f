"""OmegaConf resolvers used by tunesmith's configs (registered before Hydra composes)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

ROOT_DIR = Path(__file__).resolve().parent.parent


def _suffix(override_dirname: str) -> str:
    """``"__a=1,b=2"`` for a non-empty override string, ``""`` otherwise; path-safe."""
    if not override_dirname:
        return ""
    return "__" + override_dirname.replace("/", "-")


def register_resolvers() -> None:
    """Register ``ts.root`` (the checkout) and ``ts.suffix`` (run dir suffix); idempotent."""
    if not OmegaConf.has_resolver("ts.root"):
        OmegaConf.register_new_resolver("ts.root", lambda: str(ROOT_DIR))
    if not OmegaConf.has_resolver("ts.suffix"):
        OmegaConf.register_new_resolver("ts.suffix", _suffix)

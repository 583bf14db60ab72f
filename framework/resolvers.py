"""OmegaConf resolvers used by tunesmith's configs (registered before Hydra composes)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

ROOT_DIR = Path(__file__).resolve().parent.parent


#: Longest run-directory suffix; longer ones are cut and end in a hash (names stay < 255 bytes).
MAX_SUFFIX = 120


def _suffix(override_dirname: str) -> str:
    """``"__a=1,b=2"`` for a non-empty override string, ``""`` otherwise; path-safe.

    A long override string is cut and ends in a hash of the whole, so the same command
    always finds the same directory and the name stays within file-system limits.
    """
    if not override_dirname:
        return ""
    safe = override_dirname.replace("/", "-")
    if len(safe.encode()) > MAX_SUFFIX:
        import hashlib

        digest = hashlib.sha256(safe.encode()).hexdigest()[:12]
        safe = safe.encode()[: MAX_SUFFIX - 13].decode(errors="ignore") + "~" + digest
    return "__" + safe


def register_resolvers() -> None:
    """Register ``ts.root`` (the checkout) and ``ts.suffix`` (run dir suffix); idempotent."""
    if not OmegaConf.has_resolver("ts.root"):
        OmegaConf.register_new_resolver("ts.root", lambda: str(ROOT_DIR))
    if not OmegaConf.has_resolver("ts.suffix"):
        OmegaConf.register_new_resolver("ts.suffix", _suffix)

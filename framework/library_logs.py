"""Keep the libraries' console output to what a user needs: each line once, no adverts.

Lightning adds its own console handler (``INFO: ...``) when it is imported, so under Hydra,
whose handlers already print every record, each Lightning line showed twice. Lightning also
advertises a cloud logger on every run, and bitsandbytes warns on every import that it could
not download a kernel from the Hub (tunesmith is offline by design). Deprecation warnings
raised inside the libraries themselves are not the user's to act on.
"""

from __future__ import annotations

import logging
import warnings

#: Messages of library log records that are dropped (substrings).
_DROPPED = ("litlogger", "Failed to load CPU gemm_4bit_forward from kernels-community")

#: Library-internal deprecation warnings (regular expressions of their messages).
_LIBRARY_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"`is_gradient_checkpointing` is deprecated",
    r"`gradient_checkpointing_enable` is deprecated",
)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _DROPPED)


_FILTER = _DropAdverts()


def tidy() -> None:
    """Drop Lightning's duplicate console handler and the libraries' adverts (idempotent).

    Call after Lightning is imported. When the root logger has no handlers (tunesmith used
    as a library, outside Hydra), Lightning's own handler is the only output and is kept.
    """
    lightning = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "bitsandbytes.backends.cpu.ops"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for pattern in _LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)

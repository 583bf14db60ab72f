"""Errors a user can cause, each saying what was wrong, where, and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TunesmithError(Exception):
    """An error caused by input (config, data, model folder, environment), not a bug.

    run.py prints it as one short message and exits with status 2; the traceback is shown
    only with ``HYDRA_FULL_ERROR=1`` or ``TUNESMITH_DEBUG=1``.

    Args:
        what: what is wrong, in one sentence.
        where: the file:line, config key or path concerned.
        hint: what the user can do about it.
    """

    def __init__(self, what: str, where: str | None = None, hint: str | None = None) -> None:
        self.what, self.where, self.hint = what, where, hint
        super().__init__(self.format())

    def format(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"  where: {self.where}")
        if self.hint:
            parts.append(f"  what to do: {self.hint}")
        return "\n".join(parts)


class ConfigError(TunesmithError):
    """A config value is missing, misspelled or of the wrong type."""


class DataError(TunesmithError):
    """The data cannot be used (missing file, nothing left after validation...)."""


class ModelError(TunesmithError):
    """The model folder or model name cannot be used."""


class RecordError(Exception):
    """One raw record is wrong; the prepare stage rejects it and writes it to rejects.jsonl.

    Args:
        reason: short machine-friendly reason (``missing_field``, ``not_json``...).
        message: a sentence for people.
        field: the field concerned, if any.
    """

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        self.reason, self.message, self.field = reason, message, field
        super().__init__(message)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest of ``choices`` to ``name``, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""

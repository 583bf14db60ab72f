"""Ways a run stops early that are not bugs: a signal interrupted it, or training diverged.

Both are :class:`framework.errors.TunesmithError`\\ s, so run.py prints them as one short
message; each carries the exit status the command ends with.
"""

from __future__ import annotations

import signal

from framework.errors import TunesmithError


class RunInterrupted(TunesmithError):
    """Training was stopped by a signal (after saving a checkpoint); the run can continue.

    Attributes:
        exit_code: ``128 + signal number`` (130 for Ctrl-C, 143 for SIGTERM), as shells expect.
    """

    def __init__(
        self,
        what: str,
        where: str | None = None,
        hint: str | None = None,
        signum: int = signal.SIGINT,
    ) -> None:
        super().__init__(what, where=where, hint=hint)
        self.exit_code = 128 + int(signum)


class TrainingDiverged(TunesmithError):
    """The loss or the gradients became NaN or infinite; training stopped before using them."""

    exit_code = 3

"""A test plugin: the session stage ``peek`` counts how often it ran (see test_sessions.py)."""

from __future__ import annotations

from framework import hookimpl

CALLS: list[str] = []


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"stage": ["peek"], "session": ["peek"]}


@hookimpl
def tunesmith_run_stage(name: str, run) -> bool | None:  # noqa: ANN001
    if name != "peek":
        return None
    CALLS.append(str(run.dir))
    return True

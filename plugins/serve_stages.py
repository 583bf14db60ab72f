"""Stages ``chat`` (terminal chat) and ``serve`` (OpenAI-compatible HTTP server).

Both are *session* stages: they use a finished run without changing it, so they are not
recorded in ``run_state.json`` and run again every time they are asked for.
"""

from __future__ import annotations

from framework import hookimpl
from framework.run import Run


@hookimpl
def tunesmith_provides() -> dict[str, list[str]]:
    return {"stage": ["chat", "serve"], "session": ["chat", "serve"]}


@hookimpl
def tunesmith_run_stage(name: str, run: Run) -> bool | None:
    if name == "chat":
        from framework.chat_cli import chat

        chat(run)
    elif name == "serve":
        from framework.serve import serve

        serve(run)
    else:
        return None
    return True

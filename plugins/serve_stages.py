"""Stages ``chat`` (terminal chat) and ``serve`` (OpenAI-compatible HTTP server).

Both are *session* stages: they use a finished run without changing it, so they are not
recorded in ``run_state.json`` and run again every time they are asked for.
"""

from __future__ import annotations

from framework import Stage, hookimpl
from framework.run import Run


def chat(run: Run) -> None:
    from framework.serve.chat_cli import chat

    chat(run)


def serve(run: Run) -> None:
    from framework.serve.http import serve

    serve(run)


@hookimpl
def tunesmith_provides() -> list[Stage]:
    return [
        Stage("chat", run=chat, session=True, description="chat with the model in the terminal"),
        Stage("serve", run=serve, session=True, description="OpenAI-compatible HTTP API"),
    ]

"""The board: a local web app to launch, watch, compare and judge runs (``stages=[board]``).

``python run.py stages=[board]`` serves it on http://127.0.0.1:7860 (``conf/board/``). It is
a *session* stage: it reads the runs under the output root and never changes the run
directory it was started in. Its pages come from the ``tunesmith_board_pages`` hook, which
this plugin implements for its own pages (runs, compare, launch, judge, chat, one run); any
plugin package can add a page the same way. See docs/board.md.
"""

from __future__ import annotations

from typing import Any

from framework import Stage, hookimpl
from plugins.board.pages import Page

__all__ = ["Page"]


def board(run: Any) -> None:
    from plugins.board.app import serve

    serve(run)


@hookimpl
def tunesmith_provides() -> list[Stage]:
    return [
        Stage(
            "board",
            run=board,
            session=True,
            description="a local web page to launch, watch, compare, judge and chat with runs",
        )
    ]


@hookimpl
def tunesmith_board_pages() -> list[Page]:
    from plugins.board.views import chat, judge, launch, run, runs

    return [*runs.page(), *run.page(), *launch.page(), *judge.page(), *chat.page()]

"""Page ``/judge``: blinded A/B preferences and absolute 1-5 ratings of a run's answers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from plugins.board import judge
from plugins.board.app import board_of
from plugins.board.pages import Page

router = APIRouter()


class StartBody(BaseModel):
    path: str
    seed: int = 0
    max_items: int | None = Field(default=None, ge=1)


class PreferBody(BaseModel):
    path: str
    item: str
    preferred: str = ""
    comment: str = Field(default="", max_length=5000)


class RateBody(BaseModel):
    path: str
    item: str
    answer: str
    scores: dict[str, int]


@router.get("/api/judge")
def api_state(request: Request, path: str = "") -> dict[str, Any]:
    board = board_of(request)
    return judge.state(board.run_dir(path), board.settings.criteria)


@router.post("/api/judge/start")
def api_start(request: Request, body: StartBody) -> dict[str, Any]:
    board = board_of(request)
    run_dir = board.run_dir(body.path)
    judge.start(run_dir, body.seed, body.max_items or board.settings.judge_max_items)
    return judge.state(run_dir, board.settings.criteria)


@router.post("/api/judge/prefer")
def api_prefer(request: Request, body: PreferBody) -> dict[str, Any]:
    board = board_of(request)
    results = judge.prefer(board.run_dir(body.path), body.item, body.preferred, body.comment)
    return {"results": results}


@router.post("/api/judge/rate")
def api_rate(request: Request, body: RateBody) -> dict[str, Any]:
    board = board_of(request)
    summary = judge.rate(
        board.run_dir(body.path), body.item, body.answer, body.scores, board.settings.criteria
    )
    return {"ratings": summary}


@router.get("/judge")
def judge_page(request: Request, path: str = "") -> Any:
    board = board_of(request)
    if not path:
        return board.pick_run(
            request, "Judge", has="predictions.jsonl", what="Pick a run whose answers to judge."
        )
    run_dir = board.run_dir(path)
    return board.template(
        request,
        "judge.html",
        title="Judge",
        path=path,
        name=run_dir.name,
        criteria=board.settings.criteria,
    )


def page() -> list[Page]:
    return [Page("/judge", "Judge", router, order=40)]

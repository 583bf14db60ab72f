"""Page ``/chat``: talk to a run's tuned model, streamed, with the base model beside it."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from plugins.board.app import board_of
from plugins.board.pages import Page

router = APIRouter()


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class ChatBody(BaseModel):
    path: str
    side: Literal["tuned", "base"] = "tuned"
    messages: list[Message] = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)


@router.post("/api/chat")
def api_chat(request: Request, body: ChatBody) -> Any:
    """The answer of ``side`` to ``messages``, streamed as plain text pieces."""
    board = board_of(request)
    run_dir = board.run_dir(body.path)
    if not (run_dir / "artifact").is_dir():
        from framework.errors import TunesmithError

        raise TunesmithError(
            "This run has no trained model yet.",
            where=str(run_dir),
            hint="chat with a run whose train stage finished.",
        )
    engine = board.chat.engine(run_dir, body.side)
    params = engine.defaults.replace(max_new_tokens=body.max_tokens, temperature=body.temperature)
    stream = engine.stream([m.model_dump() for m in body.messages], params)

    def pieces() -> Any:
        yield from stream

    return StreamingResponse(pieces(), media_type="text/plain; charset=utf-8")


@router.get("/chat")
def chat_page(request: Request, path: str = "") -> Any:
    board = board_of(request)
    if not path:
        return board.pick_run(
            request, "Chat", has="artifact", what="Pick a trained run to chat with."
        )
    run_dir = board.run_dir(path)
    return board.template(request, "chat.html", title="Chat", path=path, name=run_dir.name)


def page() -> list[Page]:
    return [Page("/chat", "Chat", router, order=50)]

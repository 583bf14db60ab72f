"""A local HTTP server for a tuned model that speaks the OpenAI chat-completions API.

Endpoints (FastAPI, served by uvicorn on ``serve.host:serve.port``, 127.0.0.1 by default):

* ``GET /v1/models`` — the one model served;
* ``POST /v1/chat/completions`` — an answer, whole or streamed (``"stream": true`` gives
  server-sent events ``data: {chunk}`` and a final ``data: [DONE]``);
* ``GET /health`` — ``{"status": "ok", "busy": ..., "active": ...}``.

Bad requests get a 400 with an OpenAI-style body ``{"error": {"message", "type", "param",
"code"}}``. Generation runs in a worker thread behind one lock (see
:class:`framework.serve.engine.ChatEngine`), so the event loop keeps answering while a long
answer is generated, and a request that comes in meanwhile waits its turn.

Start it with ``python run.py stages=[serve] hydra.run.dir=<finished run>`` (or
``serve.model=<run dir | export folder>``); see docs/export.md.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from framework.errors import ConfigError
from framework.run import Run
from framework.serve.engine import ChatEngine, PromptTooLongError, serve_config

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --------------------------------------------------------------------------- request schema


class TextPart(BaseModel):
    """One part of a message's content; only text is supported."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A message of the conversation (``developer`` is read as ``system``)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> dict[str, str]:
        content = self.content
        if not isinstance(content, str):
            content = "".join(part.text for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of an OpenAI chat-completions request that tunesmith honours.

    Other OpenAI fields (``user``, ``presence_penalty``...) are accepted and ignored.
    ``min_tokens`` is an extension (as in vLLM): generate at least this many tokens.
    """

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    min_tokens: int | None = Field(default=None, ge=0)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.extra = status, message, type_, extra


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# --------------------------------------------------------------------------- the app


def create_app(engine: ChatEngine, api_key: str | None = None, max_tokens_limit: int = 4096) -> Any:
    """The FastAPI application serving ``engine``.

    Args:
        engine: the loaded model.
        api_key: when set, every request needs ``Authorization: Bearer <api_key>``.
        max_tokens_limit: the largest ``max_tokens`` a request may ask for.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    app = FastAPI(title="tunesmith", version="1", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            message = (
                f"The request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}"
            )
        elif first.get("type") == "missing":
            message = f"'{param}' is required."
        else:
            message = f"Invalid value for '{param}': {msg}." if param else msg
        if len(errors) > 1:
            message += f" ({len(errors) - 1} more problem(s) in the request)"
        return JSONResponse(
            status_code=400, content=error_body(message, "invalid_request_error", param)
        )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status, content=error_body(exc.message, exc.type, **exc.extra)
        )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(status_code=exc.status_code, content=error_body(str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse(
            status_code=500,
            content=error_body(f"The server failed: {type(exc).__name__}: {exc}", "server_error"),
        )

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        guarded = api_key and request.url.path.startswith("/v1/")
        if guarded and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse(
                status_code=401,
                content=error_body(
                    "Missing or wrong API key (send 'Authorization: Bearer <key>').",
                    "authentication_error",
                    code="invalid_api_key",
                ),
            )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": engine.model_id,
            "busy": engine.busy,
            "active": engine.active,
        }

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.model_id,
                    "object": "model",
                    "created": created,
                    "owned_by": "tunesmith",
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        if req.model and req.model != engine.model_id:
            raise APIError(
                404,
                f"The model '{req.model}' is not served here; this server serves "
                f"'{engine.model_id}'.",
                param="model",
                code="model_not_found",
            )
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is more than this server allows ({max_tokens_limit}).",
                param="max_tokens",
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        params = engine.defaults.replace(
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            min_new_tokens=req.min_tokens,
            seed=req.seed,
            stop=stop,
        )
        messages = [m.plain() for m in req.messages]
        try:
            stream = engine.stream(messages, params)
        except PromptTooLongError as exc:
            raise APIError(400, exc.what, param="messages", code="context_length_exceeded") from exc
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if not req.stream:
            await run_in_threadpool(stream.collect)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": engine.model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": stream.text},
                        "finish_reason": stream.finish_reason,
                    }
                ],
                "usage": _usage(stream),
            }
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _sse(stream, completion_id, engine.model_id, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def _usage(stream: Any) -> dict[str, int]:
    return {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": stream.completion_tokens,
        "total_tokens": stream.prompt_tokens + stream.completion_tokens,
    }


_END = object()


async def _sse(
    stream: Any, completion_id: str, model_id: str, include_usage: bool
) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer: role, content pieces, finish, [DONE]."""
    from starlette.concurrency import run_in_threadpool

    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> str:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if usage is not None:
            body["choices"] = []
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    pieces = iter(stream)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            piece = await run_in_threadpool(next, pieces, _END)
            if piece is _END:
                break
            yield chunk({"content": piece})
        yield chunk({}, finish_reason=stream.finish_reason)
        if include_usage:
            yield chunk({}, usage=_usage(stream))
    except Exception as exc:  # the answer already started: report in the stream
        log.exception("generation failed")
        yield f"data: {json.dumps(error_body(f'generation failed: {exc}', 'server_error'))}\n\n"
    finally:
        stream.cancel()  # a client that went away stops the generation
    yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------- running it


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port).

    Raises:
        ConfigError: the address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}.",
            where="serve.host / serve.port",
            hint="pick another port (serve.port=8001, or serve.port=0 for any free one).",
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def build_server(app: Any, host: str) -> Any:
    """A ``uvicorn.Server`` for ``app`` (run it with ``server.run(sockets=[bind(...)])``)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def serve(run: Run) -> None:
    """The ``serve`` stage: load the model ``serve.model`` names and answer until Ctrl-C."""
    cfg = serve_config(run)
    host, port = str(cfg.get("host") or "127.0.0.1"), int(cfg.get("port", 8000))
    sock = bind(host, port)  # before loading: a taken port fails at once
    engine = ChatEngine.from_run(run)
    api_key = cfg.get("api_key") or None
    app = create_app(
        engine, api_key=api_key, max_tokens_limit=int(cfg.get("max_tokens_limit", 4096))
    )
    actual = sock.getsockname()[1]
    if host not in LOOPBACK:
        log.warning(
            "serving on %s: reachable from other machines%s",
            host,
            "" if api_key else " and without an API key (set serve.api_key)",
        )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"tunesmith: serving '{engine.model_id}' at http://{shown}:{actual}/v1 "
        "(OpenAI chat completions; Ctrl-C stops)",
        flush=True,
    )
    try:
        build_server(app, host).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the Ctrl-C
        pass
    finally:
        sock.close()
    print("tunesmith: server stopped", flush=True)

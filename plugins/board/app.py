"""The board's web app: settings, safety checks, the pages, and the server.

:func:`create_app` builds a FastAPI app from :class:`BoardSettings` and the plugin manager;
its pages come from the ``tunesmith_board_pages`` hook (the board's own pages are served
that way too). :func:`serve` runs it with uvicorn (``python run.py stages=[board]``).

Safety, checked on every request:

* the server binds 127.0.0.1 unless told otherwise; any other address needs a token,
  printed at start (generated when ``board.token`` is not set) and required on every
  request (``?token=`` once, which sets a cookie, or an ``Authorization: Bearer`` header);
* on loopback without a token, the ``Host`` header must be a loopback name (a web page
  elsewhere cannot reach the board through DNS rebinding);
* files are served only from inside the output root and the project data folder
  (:func:`plugins.board.files.inside`), and only images are served as what they are:
  everything else is sent as plain text, under a content security policy with no inline
  scripts.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.errors import ConfigError, TunesmithError
from plugins.board.files import OutsideRoot, inside
from plugins.board.pages import Page, build_router, collect_pages

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOKEN_COOKIE = "tunesmith_board_token"
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass
class BoardSettings:
    """What ``conf/board/default.yaml`` sets (see there for each key)."""

    output_root: Path
    data_dir: Path
    project_root: Path
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    upload_limit_mb: float = 50.0
    poll_seconds: float = 2.0
    criteria: list[str] = field(
        default_factory=lambda: ["correctness", "reasonableness", "fluency", "diversity"]
    )
    judge_max_items: int | None = None

    @property
    def needs_token(self) -> bool:
        return bool(self.token) or self.host not in LOOPBACK

    @classmethod
    def from_config(cls, cfg: Any) -> BoardSettings:
        """Settings from the run config's ``board`` group (relative paths: from where the
        command ran)."""
        from framework.data.prepare import original_cwd
        from framework.resolvers import ROOT_DIR

        node = cfg.get("board") or {}
        cwd = original_cwd()

        def where(value: Any, default: Path) -> Path:
            if value in (None, ""):
                return default
            path = Path(str(value)).expanduser()
            return path if path.is_absolute() else cwd / path

        judge = node.get("judge") or {}
        # a checkout runs `python run.py` in it; an installed tool runs `tunesmith` here
        project = ROOT_DIR if (ROOT_DIR / "run.py").is_file() else cwd
        return cls(
            output_root=where(node.get("output_root"), cwd / "outputs").resolve(),
            data_dir=where(node.get("data_dir"), ROOT_DIR / "data").resolve(),
            project_root=project,
            host=str(node.get("host") or "127.0.0.1"),
            port=int(node.get("port") if node.get("port") is not None else 7860),
            token=str(node.get("token")) if node.get("token") else None,
            upload_limit_mb=float(node.get("upload_limit_mb") or 50),
            poll_seconds=float(node.get("poll_seconds") or 2),
            criteria=[str(c) for c in judge.get("criteria") or []]
            or ["correctness", "reasonableness", "fluency", "diversity"],
            judge_max_items=judge.get("max_items"),
        )


class Board:
    """What every page shares: settings, plugins, the launcher, the chat models, templates."""

    def __init__(self, settings: BoardSettings, plugins: Any, cfg: Any = None) -> None:
        from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
        from omegaconf import OmegaConf

        from plugins.board.chat import ChatModels
        from plugins.board.launch import Launcher

        self.settings = settings
        self.plugins = plugins
        self.cfg = cfg if cfg is not None else OmegaConf.create({})
        sessions = plugins.sessions() if plugins is not None else set()
        self.sessions = set(sessions) | {"board"}
        stages = set(plugins.names("stage")) if plugins is not None else set()
        self.recorded_stages = stages - self.sessions
        self.launcher = Launcher(
            settings.project_root, settings.output_root, settings.data_dir, self.recorded_stages
        )
        self.chat = ChatModels(self.cfg, plugins)
        self.loader = ChoiceLoader([FileSystemLoader(str(HERE / "templates"))])
        self.env = Environment(loader=self.loader, autoescape=select_autoescape(default=True))
        self.env.filters["num"] = format_number
        self.pages: list[Page] = []

    # ----------------------------------------------------------------- paths
    def run_dir(self, path: str | None) -> Path:
        """The run directory ``path`` names (relative to the output root).

        Raises:
            OutsideRoot: it is outside the output root, or not a run.
        """
        from plugins.board.runs import is_run_dir

        target = inside(self.settings.output_root, path)
        if not target.is_dir() or not is_run_dir(target, self.sessions):
            raise OutsideRoot(f"{path!r} is not a run")
        return target

    def rel(self, path: Path) -> str:
        from plugins.board.files import relative_to

        return relative_to(self.settings.output_root, path)

    # ----------------------------------------------------------------- html
    def nav(self) -> list[dict[str, str]]:
        return [{"path": p.path, "title": p.title} for p in self.pages if p.nav]

    def template(
        self, request: Any, template_name: str, status_code: int = 200, **context: Any
    ) -> Any:
        """A page from one of the board's templates, in the layout."""
        from fastapi.responses import HTMLResponse

        html = self.env.get_template(template_name).render(
            request=request, nav=self.nav(), board=self, active=request.url.path, **context
        )
        return HTMLResponse(html, status_code=status_code)

    def pick_run(self, request: Any, title: str, has: str, what: str) -> Any:
        """A page listing the runs whose directory holds ``has`` (a file or folder), each
        linking to ``request``'s page for that run."""
        from plugins.board.runs import find_runs

        runs, _ = find_runs(self.settings.output_root, self.sessions)
        ready = [r.as_dict() for r in runs if (r.dir / has).exists()]
        return self.template(
            request, "pick.html", title=title, target=request.url.path, runs=ready, what=what
        )

    def render(self, request: Any, title: str, body_html: str, status_code: int = 200) -> Any:
        """``body_html`` (trusted HTML) inside the board's layout: for plugin pages."""
        from markupsafe import Markup

        return self.template(
            request, "plain.html", title=title, body=Markup(body_html), status_code=status_code
        )


def format_number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def board_of(request: Any) -> Board:
    """The :class:`Board` serving ``request`` (for page routes)."""
    return request.app.state.board


def _token_of(request: Any) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (
        request.headers.get("x-board-token")
        or request.query_params.get("token")
        or request.cookies.get(TOKEN_COOKIE)
    )


def create_app(settings: BoardSettings, plugins: Any, cfg: Any = None) -> Any:
    """The board's FastAPI app: every page of ``tunesmith_board_pages``, static files, and
    the safety checks of this module."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    board = Board(settings, plugins, cfg)
    app = FastAPI(title="tunesmith board", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.board = board

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if settings.needs_token:
            given = _token_of(request) or ""
            if not (settings.token and hmac.compare_digest(given, settings.token)):
                return PlainTextResponse(
                    "This board needs its token: open the address printed at start (…/?token=...).",
                    status_code=401,
                )
        else:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
            if host not in LOOPBACK and host != settings.host:
                return PlainTextResponse("Unknown Host header.", status_code=403)
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if settings.needs_token and request.query_params.get("token"):
            response.set_cookie(
                TOKEN_COOKIE, settings.token or "", httponly=True, samesite="strict"
            )
        return response

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/") or request.method != "GET"

    @app.exception_handler(OutsideRoot)
    async def not_found(request: Request, exc: OutsideRoot) -> Any:
        if wants_json(request):
            return JSONResponse({"error": "not found"}, status_code=404)
        return board.template(
            request,
            "error.html",
            title="Not found",
            message="There is no such run or file here.",
            status_code=404,
        )

    @app.exception_handler(TunesmithError)
    async def user_error(request: Request, exc: TunesmithError) -> Any:
        if wants_json(request):
            return JSONResponse({"error": exc.format()}, status_code=400)
        return board.template(
            request, "error.html", title="Error", message=exc.format(), status_code=400
        )

    @app.exception_handler(KeyError)
    async def missing(request: Request, exc: KeyError) -> Any:
        return JSONResponse({"error": f"not found: {exc}"}, status_code=404)

    @app.get("/", include_in_schema=False)
    def home() -> Any:
        return RedirectResponse("/runs")

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    board.pages = collect_pages(plugins)
    for page in board.pages:
        app.include_router(build_router(page, board))
    return app


def serve(run: Any) -> None:
    """Serve the board until Ctrl-C (the ``board`` stage)."""
    import uvicorn

    settings = BoardSettings.from_config(run.cfg)
    if settings.host not in LOOPBACK and not settings.token:
        settings.token = secrets.token_urlsafe(24)
    if not settings.output_root.is_dir():
        log.warning(
            "The output root %s does not exist yet; launched runs will create it.",
            settings.output_root,
        )
    app = create_app(settings, run.plugins, run.cfg)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
    server = uvicorn.Server(config)
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            where="board.port",
            hint="pick another port (board.port=7861), or 0 for any free one.",
        ) from exc
    port = sock.getsockname()[1]
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{shown}:{port}/"
    if settings.token:
        url += f"?token={settings.token}"
    print(
        f"tunesmith board: {url}\n  runs under {settings.output_root}; uploads go to "
        f"{settings.data_dir / 'uploads'}\n  Ctrl-C stops the board (launched runs go on).",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        board_of_app = app.state.board
        board_of_app.launcher.shutdown()

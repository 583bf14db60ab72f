"""Board pages: what ``tunesmith_board_pages`` returns, and how the board collects them.

A page is a URL prefix, a title for the navigation bar, and a FastAPI ``APIRouter`` with
its routes (HTML pages and JSON endpoints alike). The router may also be given as a
function ``build(board) -> APIRouter`` that receives the :class:`plugins.board.app.Board`
(settings, plugin manager, helpers), for pages that need them when they are built. Inside
a route, ``plugins.board.app.board_of(request)`` gives the same object, and
``board.render(request, title, body_html)`` wraps HTML in the board's layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from framework.errors import ConfigError


@dataclass(frozen=True)
class Page:
    """One page of the board.

    Attributes:
        path: its URL (``/runs``); the navigation bar links here.
        title: the link text in the navigation bar.
        router: an ``APIRouter`` with the page's routes, or ``build(board) -> APIRouter``.
        nav: list it in the navigation bar (``False`` for pages reached from other pages).
        order: position in the navigation bar (smaller first).
    """

    path: str
    title: str
    router: Any
    nav: bool = True
    order: int = 100


def as_page(item: Any) -> Page:
    """A :class:`Page` from a ``Page`` or a mapping with the same keys."""
    if isinstance(item, Page):
        return item
    if isinstance(item, Mapping):
        return Page(
            path=str(item["path"]),
            title=str(item.get("title") or item["path"]),
            router=item["router"],
            nav=bool(item.get("nav", True)),
            order=int(item.get("order", 100)),
        )
    raise TypeError(f"a board page must be a plugins.board.Page or a mapping, not {item!r}")


def collect_pages(plugins: Any) -> list[Page]:
    """Every plugin's pages (fan-out), sorted for the navigation bar.

    Raises:
        ConfigError: two pages claim the same path, or a plugin returned something else.
    """
    pages: list[Page] = []
    seen: dict[str, Page] = {}
    for result in plugins.hook.tunesmith_board_pages():
        for item in result or []:
            try:
                page = as_page(item)
            except (TypeError, KeyError) as exc:
                raise ConfigError(
                    f"A plugin's tunesmith_board_pages returned a bad page: {exc}",
                    hint="return plugins.board.Page(path, title, router) objects.",
                ) from exc
            if not page.path.startswith("/"):
                raise ConfigError(f"Board page path '{page.path}' must start with '/'.")
            if page.path in seen:
                raise ConfigError(
                    f"Two board pages claim the path '{page.path}' "
                    f"('{seen[page.path].title}' and '{page.title}').",
                    hint="give one of them another path, or switch its plugin off "
                    "(TUNESMITH_DISABLE_PLUGINS).",
                )
            seen[page.path] = page
            pages.append(page)
    return sorted(pages, key=lambda p: (p.order, p.path))


def build_router(page: Page, board: Any) -> Any:
    """The page's ``APIRouter`` (calling its builder if it has one)."""
    from fastapi import APIRouter

    router = page.router
    if not isinstance(router, APIRouter) and isinstance(router, Callable):
        router = router(board)
    if not isinstance(router, APIRouter):
        raise ConfigError(f"Board page '{page.path}' has no APIRouter (got {router!r}).")
    return router

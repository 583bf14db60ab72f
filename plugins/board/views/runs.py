"""Pages ``/runs`` (every run and sweep), ``/compare`` (runs side by side), ``/sweep`` and
``/files`` (images and text from inside the output root or the data folder)."""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from plugins.board.app import board_of
from plugins.board.files import OutsideRoot, inside
from plugins.board.pages import Page
from plugins.board.runs import (
    config_diff,
    curves,
    find_runs,
    metric_direction,
    run_config,
    summarize,
    sweep_summary,
)

router = APIRouter()
compare_router = APIRouter()
#: Metric columns shown in the runs list.
HEADLINE_METRICS = 4
#: File types served as what they are; everything else is sent as plain text.
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


def _runs_payload(request: Request) -> dict[str, Any]:
    board = board_of(request)
    runs, sweeps = find_runs(board.settings.output_root, board.sessions)
    keys: list[str] = []
    for run in runs:
        for key in run.metrics.get("tuned", {}):
            if key not in keys:
                keys.append(key)
    headline = keys[:HEADLINE_METRICS]
    return {
        "output_root": str(board.settings.output_root),
        "runs": [r.as_dict() for r in runs],
        "sweeps": [{k: v for k, v in s.items() if k != "markdown"} for s in sweeps],
        "headline": [{"key": k, "direction": metric_direction(board.plugins, k)} for k in headline],
    }


@router.get("/api/runs")
def api_runs(request: Request) -> dict[str, Any]:
    return _runs_payload(request)


@router.get("/runs")
def runs_page(request: Request) -> Any:
    data = _runs_payload(request)
    return board_of(request).template(request, "runs.html", title="Runs", **data)


def _compare_payload(request: Request, paths: list[str]) -> dict[str, Any]:
    board = board_of(request)
    root = board.settings.output_root
    dirs = [board.run_dir(p) for p in paths]
    infos = [summarize(root, d) for d in dirs]
    configs = [run_config(d) for d in dirs]
    metric_keys: list[str] = []
    for info in infos:
        for side in ("tuned", "base"):
            for key in info.metrics.get(side, {}):
                full = f"{side}/{key}"
                if full not in metric_keys:
                    metric_keys.append(full)
    metrics = []
    for full in metric_keys:
        side, key = full.split("/", 1)
        values = [i.metrics.get(side, {}).get(key) for i in infos]
        direction = metric_direction(board.plugins, key)
        best = None
        numbers = [v for v in values if v is not None]
        if direction and len(numbers) > 1 and len(set(numbers)) > 1:
            best = (max if direction == "higher" else min)(numbers)
        metrics.append({"key": full, "direction": direction, "values": values, "best": best})
    return {
        "runs": [i.as_dict() for i in infos],
        "diff": config_diff(configs),
        "metrics": metrics,
        "curves": [
            {"path": i.path, "name": i.name, "curves": curves(d)}
            for i, d in zip(infos, dirs, strict=True)
        ],
    }


@compare_router.get("/api/compare")
def api_compare(
    request: Request, run: Annotated[list[str] | None, Query()] = None
) -> dict[str, Any]:
    return _compare_payload(request, run or [])


@compare_router.get("/compare")
def compare_page(request: Request, run: Annotated[list[str] | None, Query()] = None) -> Any:
    data = (
        _compare_payload(request, run)
        if run
        else {"runs": [], "diff": [], "metrics": [], "curves": []}
    )
    return board_of(request).template(request, "compare.html", title="Compare", **data)


@compare_router.get("/api/sweep")
def api_sweep(request: Request, path: str = "") -> dict[str, Any]:
    board = board_of(request)
    sweep_dir = inside(board.settings.output_root, path)
    summary = sweep_summary(board.settings.output_root, sweep_dir, board.sessions)
    summary.pop("_jobs", None)
    return summary


@compare_router.get("/sweep")
def sweep_page(request: Request, path: str = "") -> Any:
    data = api_sweep(request, path)
    return board_of(request).template(request, "sweep.html", title="Sweep", sweep=data)


@router.get("/files/{root}/{path:path}")
def files(request: Request, root: str, path: str) -> Any:
    """A file from inside the output root (``/files/outputs/...``) or the data folder
    (``/files/data/...``); images as images, anything else as plain text."""
    board = board_of(request)
    roots = {"outputs": board.settings.output_root, "data": board.settings.data_dir}
    if root not in roots:
        raise OutsideRoot(root)
    target = inside(roots[root], path)
    if not target.is_file():
        raise OutsideRoot(path)
    kind = mimetypes.guess_type(target.name)[0]
    media = kind if kind in IMAGE_TYPES else "text/plain; charset=utf-8"
    return FileResponse(target, media_type=media)


def page() -> list[Page]:
    return [
        Page("/runs", "Runs", router, order=10),
        Page("/compare", "Compare", compare_router, order=20),
    ]

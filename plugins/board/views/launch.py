"""Page ``/launch``: a form that becomes a ``python run.py ...`` command, started, watched,
stopped (SIGINT: checkpoint, then exit) and resumed from the page; uploads of data files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from plugins.board.app import board_of
from plugins.board.files import inside, read_yaml
from plugins.board.launch import LaunchError, config_options, upload_name
from plugins.board.pages import Page

router = APIRouter()
UPLOADS = "uploads"


def _job(request: Request, job: Any) -> dict[str, Any]:
    return board_of(request).launcher.describe(job)


@router.get("/api/launch/options")
def api_options(request: Request) -> dict[str, Any]:
    board = board_of(request)
    return {
        "groups": config_options(),
        "stages": sorted(board.recorded_stages),
        "file_types": board.plugins.names("file") if board.plugins else [],
        "upload_limit_mb": board.settings.upload_limit_mb,
    }


@router.post("/api/launch/preview")
async def api_preview(request: Request) -> dict[str, Any]:
    board = board_of(request)
    form = await _form(request)
    info = board.launcher.preview(form)
    return {**info, "run_dir": str(info["run_dir"])}


@router.post("/api/launch")
async def api_launch(request: Request) -> dict[str, Any]:
    board = board_of(request)
    job = board.launcher.start(await _form(request))
    return _job(request, job)


@router.get("/api/launch/jobs")
def api_jobs(request: Request) -> dict[str, Any]:
    launcher = board_of(request).launcher
    return {"jobs": [launcher.describe(j) for j in launcher.jobs.values()]}


@router.get("/api/launch/{job_id}")
def api_job(request: Request, job_id: str, offset: int = 0) -> dict[str, Any]:
    launcher = board_of(request).launcher
    text, after = launcher.read_log(job_id, offset)
    return {**launcher.describe(launcher.get(job_id)), "log": text, "offset": after}


@router.post("/api/launch/{job_id}/stop")
def api_stop(request: Request, job_id: str) -> dict[str, Any]:
    return _job(request, board_of(request).launcher.stop(job_id))


@router.post("/api/launch/{job_id}/resume")
def api_resume(request: Request, job_id: str) -> dict[str, Any]:
    return _job(request, board_of(request).launcher.resume(job_id))


@router.put("/api/upload")
async def api_upload(request: Request, name: str = "") -> Any:
    """Store the request body as ``<data folder>/uploads/<name>`` (size-limited)."""
    board = board_of(request)
    suffixes = board.plugins.names("file") if board.plugins else [".jsonl"]
    filename = upload_name(name, suffixes)
    limit = int(board.settings.upload_limit_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return JSONResponse({"error": _too_big(board)}, status_code=413)
    (board.settings.data_dir / UPLOADS).mkdir(parents=True, exist_ok=True)
    folder = inside(board.settings.data_dir, UPLOADS)  # no symlink out of the data folder
    target = inside(board.settings.data_dir, f"{UPLOADS}/{filename}", must_exist=False)
    stem, suffix = filename.split(".", 1)[0], filename[len(filename.split(".", 1)[0]) :]
    n = 1
    while target.exists():
        target = inside(board.settings.data_dir, f"{UPLOADS}/{stem}-{n}{suffix}", must_exist=False)
        n += 1
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=folder)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise LaunchError(_too_big(board), where="upload")
                f.write(chunk)
        if size == 0:
            raise LaunchError("The uploaded file is empty.", where="upload")
        os.replace(tmp, target)
    except LaunchError as exc:
        Path(tmp).unlink(missing_ok=True)
        status = 413 if size > limit else 400
        return JSONResponse({"error": exc.format()}, status_code=status)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        shown = target.relative_to(board.settings.project_root).as_posix()
    except ValueError:
        shown = str(target)
    return {"path": shown, "bytes": size}


def _too_big(board: Any) -> str:
    return f"The file is larger than the upload limit ({board.settings.upload_limit_mb:g} MB; board.upload_limit_mb)."


async def _form(request: Request) -> dict[str, Any]:
    try:
        form = await request.json()
    except ValueError:
        form = None
    if not isinstance(form, dict):
        raise LaunchError("The launch form must be a JSON object.")
    return form


@router.get("/launch")
def launch_page(request: Request, resume: str = "") -> Any:
    """The form; ``?resume=<run>`` fills it with that run's overrides."""
    board = board_of(request)
    prefill: list[str] = []
    if resume:
        run_dir = board.run_dir(resume)
        saved = read_yaml(run_dir / ".hydra" / "overrides.yaml")
        prefill = [str(x) for x in saved] if isinstance(saved, list) else []
    return board.template(
        request,
        "launch.html",
        title="Launch",
        options=config_options(),
        stages=sorted(board.recorded_stages),
        prefill=prefill,
        file_types=board.plugins.names("file") if board.plugins else [],
        limit=board.settings.upload_limit_mb,
    )


def page() -> list[Page]:
    return [Page("/launch", "Launch", router, order=30)]

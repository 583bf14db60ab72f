"""Page ``/run``: one run's config, metrics, curves (live while it runs), data report and
predictions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from plugins.board.app import board_of
from plugins.board.files import read_json, read_text
from plugins.board.pages import Page
from plugins.board.predictions import browse
from plugins.board.runs import curves, data_report, metric_direction, run_config, summarize

router = APIRouter()


def _run_payload(request: Request, path: str) -> dict[str, Any]:
    board = board_of(request)
    run_dir = board.run_dir(path)
    info = summarize(board.settings.output_root, run_dir)
    metrics = info.metrics
    keys = list(dict.fromkeys([*metrics.get("tuned", {}), *metrics.get("base", {})]))
    table = []
    for key in keys:
        base, tuned = metrics.get("base", {}).get(key), metrics.get("tuned", {}).get(key)
        direction = metric_direction(board.plugins, key)
        change, better = None, None
        if base is not None and tuned is not None:
            change = tuned - base
            if direction and change:
                better = (change > 0) == (direction == "higher")
        table.append(
            {
                "key": key,
                "base": base,
                "tuned": tuned,
                "change": change,
                "better": better,
                "direction": direction,
            }
        )
    config_text = read_text(run_dir / "config.yaml", limit=500_000) or ""
    return {
        "run": info.as_dict(),
        "metrics_table": table,
        "config_text": config_text,
        "train_summary": read_json(run_dir / "train_summary.json"),
        "data": data_report(run_dir),
        "has_predictions": (run_dir / "predictions.jsonl").is_file(),
        "has_loss_plot": (run_dir / "loss_curve.png").is_file(),
        "eval_report": read_text(run_dir / "eval_report.md", limit=200_000) or "",
        "human_eval": read_json(run_dir / "human_eval" / "results.json"),
    }


@router.get("/api/run")
def api_run(request: Request, path: str = "") -> dict[str, Any]:
    return _run_payload(request, path)


@router.get("/api/run/curves")
def api_curves(request: Request, path: str = "") -> dict[str, Any]:
    board = board_of(request)
    run_dir = board.run_dir(path)
    info = summarize(board.settings.output_root, run_dir)
    return {"status": info.status, "curves": curves(run_dir)}


@router.get("/api/run/predictions")
def api_predictions(
    request: Request,
    path: str = "",
    q: str = "",
    metric: str = "",
    side: str = "tuned",
    verdict: str = "",
    page: int = 1,
) -> dict[str, Any]:
    board = board_of(request)
    run_dir = board.run_dir(path)
    return browse(
        run_dir / "predictions.jsonl", run_config(run_dir), q, metric, side, verdict, page
    )


@router.get("/run")
def run_page(request: Request, path: str = "") -> Any:
    data = _run_payload(request, path)
    board = board_of(request)
    return board.template(
        request,
        "run.html",
        title=data["run"]["name"],
        path=path,
        poll=board.settings.poll_seconds,
        **data,
    )


def page() -> list[Page]:
    return [Page("/run", "Run", router, nav=False, order=20)]

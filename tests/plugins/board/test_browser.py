"""The board in a real browser: Debian's headless Chromium driven by Playwright.

Covers: the runs list, a run with its curve, filtering predictions, judging two items (found
in the saved results), a tiny run launched from the form and watched to the end, and a run
stopped (checkpoint) and resumed. Saves a screenshot of each page to docs/images/board-*.png
(shown in docs/board.md). Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the
``playwright`` Python package; no browser download.
"""

from __future__ import annotations

import csv
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from framework.manager import build_plugin_manager
from framework.resolvers import ROOT_DIR
from plugins.board.app import BoardSettings, create_app
from tests.conftest import write_sums
from tests.plugins.board.boards import REAL, make_output_root

CHROMIUM = Path("/usr/bin/chromium")
IMAGES = ROOT_DIR / "docs" / "images"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Keeps launched tiny runs short and quiet.
TINY_EXTRA = (
    "trainer.max_epochs=-1\ntrainer.precision=32-true\ntrainer.enable_progress_bar=false\n"
    "trainer.log_every_n_steps=1\nevaluator.max_new_tokens=4"
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import uvicorn

    base = tmp_path_factory.mktemp("board-browser")
    out = make_output_root(tmp_path_factory, base)
    (base / "data").mkdir()
    settings = BoardSettings(
        output_root=out, data_dir=base / "data", project_root=ROOT_DIR, poll_seconds=1
    )
    app = create_app(settings, build_plugin_manager())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", base
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium: apt-get install -y chromium")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
            bypass_csp=True,  # lets wait_for_function evaluate its expressions
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        context.close()
        assert not errors, errors


def shot(page, name: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / f"board-{name}.png"), full_page=False)


def test_runs_list_run_page_curve_and_predictions(server, page) -> None:
    url, _ = server
    page.goto(url + "/runs")
    page.wait_for_selector("table#runs tbody tr")
    assert page.locator("tr[data-status=running]").count() == 1
    page.fill("#filter", "killed")
    assert page.locator("table#runs tbody tr:visible").count() == 1
    page.fill("#filter", "")
    shot(page, "runs")
    page.click(f"tr[data-path='{REAL}'] a.run-link")
    page.wait_for_selector("#loss-chart svg g.series path")
    assert page.locator("#loss-chart g.series").count() >= 1
    page.wait_for_selector("#pred-list .pred")
    total = page.locator("#pred-list .pred").count()
    assert total == 4
    page.select_option("#pred-metric", "exact_match")
    page.select_option("#pred-verdict", "right")
    page.wait_for_function("document.querySelector('#pred-count').textContent.length > 0")
    right = page.locator("#pred-list .pred").count()
    page.select_option("#pred-verdict", "wrong")
    page.wait_for_function(f"document.querySelectorAll('#pred-list .pred').length === {4 - right}")
    page.select_option("#pred-verdict", "")
    shot(page, "run")
    page.locator("#predictions").scroll_into_view_if_needed()
    shot(page, "predictions")


def test_compare_and_sweep(server, page) -> None:
    url, _ = server
    page.goto(url + "/runs")
    for box in page.locator("tr:has(a[href*='multirun']) input.pick").all()[:2]:
        box.check()
    page.click("#compare-btn")
    page.wait_for_selector("#compare-chart svg g.series path")
    assert page.locator("#compare-chart g.series").count() == 2
    shot(page, "compare")
    page.goto(url + "/sweep?path=" + quote("multirun/sweep-r", safe=""))
    page.wait_for_selector("tr.best")
    shot(page, "sweep")


def test_judge_two_items_and_find_them_in_the_results(server, page) -> None:
    url, base = server
    page.goto(url + "/judge?path=" + quote(REAL, safe=""))
    page.click("#start-btn")
    page.wait_for_selector("#judge-main:not([hidden])")
    first = page.locator("#item-select option:checked").inner_text()
    page.click("button.pref[data-value=A]")
    page.wait_for_function("document.querySelector('#j-saved').textContent.startsWith('saved')")
    page.click("button.pref[data-value=B]")
    page.wait_for_function(
        "document.querySelector('#judge-progress').textContent.startsWith('2 of')"
    )
    page.locator(".ratings[data-answer=A] select").first.select_option("4")
    page.wait_for_function("document.querySelector('#j-saved').textContent === 'saved'")
    page.click("#results-box summary")
    shot(page, "judge")
    folder = base / "outputs" / REAL / "human_eval"
    with (folder / "sheet.csv").open(encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["preferred"]]
    assert len(rows) == 2 and rows[0]["preferred"] in ("A", "B")
    assert first in {r["item"] for r in rows}
    import json

    results = json.loads((folder / "results.json").read_text())
    assert results["scored"] == 2
    assert (folder / "ratings.csv").is_file()


def test_chat_streams_both_answers(server, page) -> None:
    url, _ = server
    page.goto(url + "/chat?path=" + quote(REAL, safe=""))
    page.fill("#chat-text", "1 + 1")
    page.press("#chat-text", "Enter")
    page.wait_for_function("!document.querySelector('#chat-send').disabled", timeout=120_000)
    assert page.locator("#log-tuned .msg.user").inner_text() == "1 + 1"
    assert page.locator("#log-base .msg.assistant").count() == 1
    assert "error" not in page.locator("#log-tuned .msg.assistant").inner_text()
    shot(page, "chat")


def _launch(page, url: str, data_path: str, **fields: str) -> None:
    page.goto(url + "/launch")
    page.select_option("select[name=data]", "alpaca")
    page.select_option("select[name=model]", "tiny")
    page.fill("input[name=data_path]", data_path)
    for name, value in fields.items():
        page.fill(f"input[name={name}]", value)
    page.uncheck("input[name=stages][value=export]")
    page.uncheck("input[name=stages][value=evaluate]")
    page.fill("textarea[name=extra]", TINY_EXTRA)
    page.click("#preview-btn")
    page.wait_for_selector("#command:not([hidden])")
    assert "python run.py" in page.inner_text("#command")
    page.click("#launch-btn")
    page.wait_for_selector("#job:not([hidden])")


def test_upload_launch_a_tiny_run_and_watch_it_finish(server, page, tmp_path: Path) -> None:
    url, base = server
    page.goto(url + "/launch")
    page.set_input_files("#upload", str(write_sums(tmp_path / "sums.jsonl")))
    page.wait_for_function(
        "document.querySelector('#upload-status').textContent.startsWith('uploaded')"
    )
    uploaded = page.input_value("input[name=data_path]")
    assert (base / "data" / "uploads" / "sums.jsonl").is_file()
    _launch(page, url, str(base / "data" / "uploads" / "sums.jsonl"), max_steps="2")
    page.wait_for_function(
        "document.querySelector('#job-status').textContent === 'finished'", timeout=180_000
    )
    assert "stage: train" in page.inner_text("#job-log")
    shot(page, "launch")
    assert uploaded


def test_stop_and_resume_a_run(server, page, tmp_path: Path) -> None:
    url, base = server
    data = write_sums(base / "data" / "stop.jsonl")
    # long enough to still be training when Stop is pressed, however fast start-up gets
    _launch(page, url, str(data), max_steps="600", run_name="stoppable")
    page.wait_for_function(
        "document.querySelector('#job-log').textContent.includes('stage: train')",
        timeout=120_000,
    )
    time.sleep(3)
    page.click("#stop-btn")
    page.wait_for_function(
        "['interrupted', 'finished'].includes(document.querySelector('#job-status').textContent)",
        timeout=120_000,
    )
    status = page.inner_text("#job-status")
    run_dir = base / "outputs" / "runs" / "stoppable"
    matches = [p for p in (base / "outputs" / "runs").iterdir() if p.name.startswith("stoppable")]
    run_dir = matches[0] if matches else run_dir
    if status == "interrupted":
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        page.click("#resume-btn")
        page.wait_for_function(
            "document.querySelector('#job-status').textContent === 'finished'", timeout=180_000
        )
        assert "Continuing" in page.inner_text("#job-log")
    import json

    state = json.loads((run_dir / "run_state.json").read_text())
    assert state["status"] == "finished"

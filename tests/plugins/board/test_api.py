"""The board's endpoints, on a real tiny run, a sweep and half-written runs (no browser)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi import APIRouter, Request
from fastapi.testclient import TestClient

from framework import hookimpl
from framework.errors import ConfigError
from framework.evaluate import human_eval
from framework.manager import build_plugin_manager
from framework.resolvers import ROOT_DIR
from plugins.board.app import BoardSettings, board_of, create_app
from tests.conftest import compose_config
from tests.plugins.board.boards import REAL, client_for, make_output_root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("board")
    make_output_root(tmp_path_factory, base)
    (base / "data").mkdir()
    (base / "data" / "mine.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (base / "secret").mkdir()
    (base / "secret" / "key.txt").write_text("do not serve")
    os.symlink(base / "secret", base / "outputs" / "link-out")
    os.symlink(base / "secret" / "key.txt", base / "data" / "key-link.txt")
    return base


@pytest.fixture(scope="module")
def client(root: Path) -> TestClient:
    return client_for(root / "outputs", root / "data")


def q(path: str) -> str:
    return quote(path, safe="")


# --------------------------------------------------------------------------- config and plugin


def test_board_is_a_session_stage_with_a_config_group() -> None:
    plugins = build_plugin_manager()
    info = plugins.describe("stage", "board")
    assert info is not None and info.session and info.run is not None
    cfg = compose_config()
    assert cfg.board.host == "127.0.0.1"
    assert cfg.board.output_root == cfg.paths.output_dir
    assert str(cfg.board.data_dir).endswith("/data")


def test_settings_from_config_resolve_relative_paths(tmp_path: Path) -> None:
    cfg = compose_config(["board.output_root=" + str(tmp_path / "o"), "board.port=0"])
    settings = BoardSettings.from_config(cfg)
    assert settings.output_root == (tmp_path / "o").resolve()
    assert settings.port == 0 and not settings.needs_token
    assert settings.data_dir == (ROOT_DIR / "data").resolve()


# --------------------------------------------------------------------------- runs and compare


def test_runs_list_shows_every_run_and_sweep_with_status(client: TestClient) -> None:
    data = client.get("/api/runs").json()
    by_path = {r["path"]: r for r in data["runs"]}
    assert by_path[REAL]["status"] == "finished"
    assert by_path[REAL]["model"] == "tiny" and by_path[REAL]["method"] == "lora"
    assert by_path[REAL]["hparams"]["trainer.max_steps"] == 4
    assert "perplexity" in by_path[REAL]["metrics"]["tuned"]
    assert by_path["runs/in-progress"]["status"] == "running"
    assert by_path["runs/killed"]["status"] == "interrupted"
    assert by_path["runs/failed"]["status"] == "failed"
    assert by_path["runs/failed"]["error"] == "DataError: bad file"
    assert by_path["runs/broken"]["status"] == "new"
    assert "runs/board-only" not in by_path  # a session stage's directory is not a run
    (sweep,) = data["sweeps"]
    assert [j["best"] for j in sweep["jobs"]] == [True, False]  # ranked, best first
    assert sweep["best"].endswith("method.r=8")
    html = client.get("/runs").text
    assert "tiny-real" not in html or "tiny-lora-alpaca" in html
    assert "in-progress" in html and "interrupted" in html


def test_compare_shows_only_differing_config_and_metric_directions(client: TestClient) -> None:
    jobs = [r["path"] for r in client.get("/api/runs").json()["runs"] if r["sweep"]]
    data = client.get("/api/compare", params=[("run", p) for p in jobs]).json()
    assert len(data["runs"]) == 2
    perplexity = next(m for m in data["metrics"] if m["key"] == "tuned/perplexity")
    assert perplexity["values"] == [96.0, 92.0] or perplexity["values"] == [92.0, 96.0]
    # the copies share their config: nothing differs
    assert data["diff"] == []
    assert all("train/loss" in c["curves"] for c in data["curves"])
    both = client.get("/api/compare", params=[("run", REAL), ("run", "runs/in-progress")]).json()
    keys = {d["key"] for d in both["diff"]}
    assert "model.name" not in keys  # both tiny
    assert "run_name" in keys and "seed" in keys
    page = client.get("/compare", params=[("run", p) for p in jobs])
    assert page.status_code == 200 and "only what differs" in page.text


def test_sweep_page_marks_the_best_job(client: TestClient) -> None:
    sweep = client.get("/api/runs").json()["sweeps"][0]["path"]
    data = client.get(f"/api/sweep?path={q(sweep)}").json()
    assert data["metric"] == "tuned/perplexity" and data["jobs"][0]["best"]
    html = client.get(f"/sweep?path={q(sweep)}").text
    assert "★" in html and "sweep_summary.md" in html


# --------------------------------------------------------------------------- one run


def test_run_page_shows_config_metrics_data_and_curves(client: TestClient) -> None:
    data = client.get(f"/api/run?path={q(REAL)}").json()
    assert data["run"]["status"] == "finished"
    assert "model:" in data["config_text"]
    keys = [m["key"] for m in data["metrics_table"]]
    assert "perplexity" in keys
    assert data["data"]["report"]["loaded"] == 40
    spot = data["data"]["spot_check"]
    assert spot and any(not learned for _, learned in spot[0]["spans"])  # the masked prompt
    assert any(learned for _, learned in spot[0]["spans"])
    curves = client.get(f"/api/run/curves?path={q(REAL)}").json()
    assert curves["status"] == "finished"
    assert [p[0] for p in curves["curves"]["train/loss"]] == [0, 1, 2, 3]
    html = client.get(f"/run?path={q(REAL)}").text
    assert "Training curves" in html and "Spot check" in html and "learned" in html


def test_predictions_filter_by_verdict_search_and_diff(client: TestClient) -> None:
    url = f"/api/run/predictions?path={q(REAL)}"
    everything = client.get(url).json()
    assert everything["total"] == 4 and everything["sides"] == ["base", "tuned"]
    assert everything["metrics"] == ["exact_match"]
    item = everything["items"][0]
    assert set(item["answers"]) == {"base", "tuned"}
    assert "exact_match" in item["answers"]["tuned"]["verdicts"]
    wrong = client.get(url + "&metric=exact_match&side=tuned&verdict=wrong").json()
    right = client.get(url + "&metric=exact_match&side=tuned&verdict=right").json()
    assert wrong["total"] + right["total"] == 4
    reference = item["reference"]
    found = client.get(url + "&q=" + quote(item["prompt"][-5:])).json()
    assert found["total"] >= 1 and any(i["reference"] == reference for i in found["items"])
    assert client.get(url + "&q=no-such-text-anywhere").json()["total"] == 0


def test_diff_segments_mark_what_the_answer_adds() -> None:
    from plugins.board.predictions import diff_segments

    assert diff_segments("the cat sat", "the dog sat") == [
        ["same", "the "],
        ["added", "cat"],
        ["same", " sat"],
    ]


def test_half_written_runs_never_break_a_page(client: TestClient) -> None:
    for path in ("runs/in-progress", "runs/killed", "runs/broken", "runs/failed"):
        for url in (
            f"/run?path={q(path)}",
            f"/api/run?path={q(path)}",
            f"/api/run/curves?path={q(path)}",
            f"/api/run/predictions?path={q(path)}",
            f"/judge?path={q(path)}",
            f"/chat?path={q(path)}",
            f"/launch?resume={q(path)}",
        ):
            assert client.get(url).status_code == 200, url
    live = client.get("/api/run/curves?path=runs/in-progress").json()
    assert [p[0] for p in live["curves"]["train/loss"]] == [0, 1, 2]  # the cut row is left out
    preds = client.get("/api/run/predictions?path=runs/in-progress").json()
    assert preds["total"] == 1 and set(preds["items"][0]["answers"]) == {"base", "tuned"}
    data = client.get("/api/run?path=runs/in-progress").json()
    assert data["data"]["rejects"][0]["source"] == "mine.jsonl:3"
    assert data["run"]["metrics"] == {}
    assert client.get("/runs").status_code == 200
    assert client.get("/api/compare?run=runs/broken&run=runs/killed").status_code == 200


# --------------------------------------------------------------------------- safety


HOSTILE = [
    "../secret/key.txt",
    "runs/../../secret/key.txt",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "..%2F..%2Fsecret%2Fkey.txt",
    "link-out/key.txt",
    "~/.bashrc",
    "runs/..\\..\\secret",
    "runs/%00",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_are_refused(client: TestClient, path: str) -> None:
    for url in (
        f"/files/outputs/{path}",
        f"/files/data/{path}",
        f"/api/run?path={path}",
        f"/api/run/curves?path={path}",
        f"/api/run/predictions?path={path}",
        f"/run?path={path}",
        f"/api/sweep?path={path}",
        f"/api/judge?path={path}",
    ):
        response = client.get(url)
        assert response.status_code in (404, 422), url
        assert "do not serve" not in response.text
        assert "root:" not in response.text


def test_files_are_served_from_inside_the_roots_only(client: TestClient) -> None:
    image = client.get(f"/files/outputs/{REAL}/loss_curve.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    text = client.get(f"/files/outputs/{REAL}/config.yaml")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert client.get("/files/data/mine.jsonl").status_code == 200
    assert client.get("/files/data/key-link.txt").status_code == 404  # a symlink out
    assert client.get("/files/etc/passwd").status_code == 404  # no such root
    assert client.get(f"/files/outputs/{REAL}").status_code == 404  # a directory


def test_every_page_has_a_strict_content_security_policy(client: TestClient) -> None:
    response = client.get("/runs")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<script>" not in response.text  # no inline script: data goes in JSON blocks


def test_loopback_board_refuses_foreign_host_headers(root: Path) -> None:
    client = client_for(root / "outputs", root / "data")
    assert client.get("/api/runs").status_code == 200
    assert client.get("/api/runs", headers={"host": "evil.example:7860"}).status_code == 403


def test_a_board_on_another_address_needs_its_token(root: Path) -> None:
    client = client_for(root / "outputs", root / "data", host="0.0.0.0", token="s3cret")
    assert client.get("/runs").status_code == 401
    assert client.get("/api/runs?token=wrong").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    first = client.get("/runs?token=s3cret")
    assert first.status_code == 200
    assert client.get("/api/runs").status_code == 200  # the cookie set by the first visit
    client.cookies.clear()
    assert client.get("/static/board.js").status_code == 401


def test_token_is_generated_for_other_addresses() -> None:
    settings = BoardSettings(
        output_root=Path("."), data_dir=Path("."), project_root=ROOT_DIR, host="0.0.0.0"
    )
    assert settings.needs_token


def test_static_files_are_shipped_with_the_package(client: TestClient) -> None:
    for name in ("board.js", "chart.js", "board.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and len(response.text) > 500
    js = client.get("/static/board.js").text + client.get("/static/chart.js").text
    assert "http://" not in js.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in js


# --------------------------------------------------------------------------- judge


def test_judge_saves_preferences_as_the_csv_import_does(client: TestClient, root: Path) -> None:
    run_dir = root / "outputs" / REAL
    state = client.get(f"/api/judge?path={q(REAL)}").json()
    assert state["started"] is False
    state = client.post("/api/judge/start", json={"path": REAL}).json()
    assert state["started"] and len(state["items"]) == 4
    first, second = state["items"][0]["item"], state["items"][1]["item"]
    r = client.post(
        "/api/judge/prefer", json={"path": REAL, "item": first, "preferred": "A", "comment": "ok"}
    )
    assert r.status_code == 200
    r = client.post("/api/judge/prefer", json={"path": REAL, "item": second, "preferred": "tie"})
    results = r.json()["results"]
    folder = run_dir / "human_eval"
    # exactly what the CSV import computes from the sheets (A/B, and the blank ratings sheet)
    assert results == {
        **human_eval.import_sheet(folder / "sheet.csv", folder / "key.json"),
        "ratings": human_eval.import_ratings(folder / "ratings.csv", folder / "key.json"),
    }
    assert json.loads((folder / "results.json").read_text()) == results
    assert results["scored"] == 2 and results["unscored"] == 2
    with (folder / "sheet.csv").open(encoding="utf-8-sig", newline="") as f:
        rows = {row["item"]: row for row in csv.DictReader(f)}
    assert rows[first]["preferred"] == "A" and rows[first]["comment"] == "ok"
    assert rows[second]["preferred"] == "tie"
    # resumable: starting again keeps the sheet and its answers
    again = client.post("/api/judge/start", json={"path": REAL}).json()
    assert [i["preferred"] for i in again["items"][:2]] == ["A", "tie"]
    assert again["next"] == again["items"][2]["item"]
    # absolute ratings
    r = client.post(
        "/api/judge/rate",
        json={"path": REAL, "item": first, "answer": "B", "scores": {"fluency": 4}},
    )
    ratings = r.json()["ratings"]
    assert sum(s["fluency"]["count"] for s in ratings["sides"].values()) == 1
    assert (folder / "ratings.csv").is_file()
    # bad input
    assert (
        client.post(
            "/api/judge/prefer", json={"path": REAL, "item": first, "preferred": "C"}
        ).status_code
        == 400
    )
    assert (
        client.post(
            "/api/judge/prefer", json={"path": REAL, "item": "9999", "preferred": "A"}
        ).status_code
        == 400
    )
    bad_scores = [{"fluency": 9}, {"nonsense": 3}]
    for scores in bad_scores:
        r = client.post(
            "/api/judge/rate", json={"path": REAL, "item": first, "answer": "A", "scores": scores}
        )
        assert r.status_code == 400
    assert client.get(f"/judge?path={q(REAL)}").status_code == 200
    run_page = client.get(f"/run?path={q(REAL)}").text
    assert "Human evaluation (2 of 4 scored)" in run_page


def test_judge_needs_predictions(client: TestClient) -> None:
    r = client.post("/api/judge/start", json={"path": "runs/failed"})
    assert r.status_code == 400 and "predictions" in r.json()["error"]


# --------------------------------------------------------------------------- chat


def test_chat_streams_the_tuned_and_the_base_answer(client: TestClient) -> None:
    for side in ("tuned", "base"):
        body = {
            "path": REAL,
            "side": side,
            "messages": [{"role": "user", "content": "1 + 1"}],
            "max_tokens": 4,
            "temperature": 0,
        }
        with client.stream("POST", "/api/chat", json=body) as response:
            assert response.status_code == 200
            text = "".join(response.iter_text())
        assert isinstance(text, str)
    engines = board_of_client(client).chat.engines
    assert set(engines) == {"tuned", "base"}
    assert engines["tuned"].model is not engines["base"].model


def board_of_client(client: TestClient):
    class _Req:
        app = client.app

    return board_of(_Req())


def test_chat_refuses_runs_without_a_model(client: TestClient) -> None:
    body = {"path": "runs/failed", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/api/chat", json=body).status_code == 400
    body = {"path": REAL, "messages": []}
    assert client.post("/api/chat", json=body).status_code == 422


# --------------------------------------------------------------------------- pages from plugins


class ExtraPage:
    """An outside plugin that adds a page through tunesmith_board_pages."""

    router = APIRouter()

    @staticmethod
    @router.get("/hello")
    def hello(request: Request) -> object:
        return board_of(request).render(request, "Hello", "<p>hello from a plugin</p>")

    @hookimpl
    def tunesmith_board_pages(self) -> list[dict]:
        return [{"path": "/hello", "title": "Hello", "router": self.router}]


def test_a_plugin_can_add_a_page(root: Path) -> None:
    plugins = build_plugin_manager()
    plugins.pm.register(ExtraPage(), name="extra-page")
    settings = BoardSettings(
        output_root=root / "outputs", data_dir=root / "data", project_root=ROOT_DIR
    )
    client = TestClient(create_app(settings, plugins), base_url="http://127.0.0.1")
    page = client.get("/hello")
    assert page.status_code == 200 and "hello from a plugin" in page.text
    assert 'href="/hello"' in client.get("/runs").text  # in the navigation bar


def test_two_pages_on_one_path_are_an_error(root: Path) -> None:
    class Clash:
        @hookimpl
        def tunesmith_board_pages(self) -> list[dict]:
            return [{"path": "/runs", "title": "Mine", "router": APIRouter()}]

    plugins = build_plugin_manager()
    plugins.pm.register(Clash(), name="clash")
    settings = BoardSettings(
        output_root=root / "outputs", data_dir=root / "data", project_root=ROOT_DIR
    )
    with pytest.raises(ConfigError, match="/runs"):
        create_app(settings, plugins)

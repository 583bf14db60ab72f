"""Launching from the board: validated overrides, uploads, and a real tiny run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TINY, write_sums
from tests.plugins.board.boards import client_for


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestClient, Path]:
    out, data = tmp_path / "outputs", tmp_path / "data"
    out.mkdir()
    data.mkdir()
    return client_for(out, data, upload_limit_mb=0.01), tmp_path


def form(**extra: object) -> dict:
    return {"data": "alpaca", "model": "tiny", "method": "lora", **extra}


def test_preview_shows_the_command_and_the_run_directory(setup) -> None:
    client, tmp = setup
    r = client.post(
        "/api/launch/preview",
        json=form(
            data_path="data/demo/contacts.jsonl", lr="1e-3", max_steps="3", stages=["prepare"]
        ),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["overrides"] == [
        "data=alpaca",
        "model=tiny",
        "method=lora",
        "data.path=data/demo/contacts.jsonl",
        "optim.lr=1e-3",
        "trainer.max_steps=3",
        "stages=[prepare]",
    ]
    assert "python run.py data=alpaca model=tiny" in body["command"]
    assert f"TUNESMITH_OUTPUT={tmp / 'outputs'}" in body["command"]
    assert body["run_dir"] == str(
        tmp
        / "outputs"
        / "runs"
        / "tiny-lora-alpaca__data.path=data-demo-contacts.jsonl,optim.lr=1e-3"
    )


BAD = [
    ("hydra.run.dir=/tmp/elsewhere", "cannot be set"),
    ("paths.output_dir=/tmp", "cannot be set"),
    ("plugins=[os]", "cannot be set"),
    ("+new_key=1", "plain key=value"),
    ("++trainer.max_steps=1", "plain key=value"),
    ("~data", "plain key=value"),
    ("method.r=4,8", "sweep"),
    ("no_such.key=1", "Unknown config key"),
    ("trainer.max_steps=lots", "Wrong type"),
    ("stages=[board]", "cannot be launched"),
    ("stages=[serve]", "cannot be launched"),
    ("run_name=${oc.env:HOME}", "interpolations"),
    ("data.path=/etc/passwd", "inside the project"),
    ("data.path=../../etc/passwd", "inside the project"),
    ("-m", "flags"),
    ("--config-dir=/tmp", "flags"),
    ("method@foo=lora", "plain key=value"),
    ("a b c", "Cannot read"),
]


@pytest.mark.parametrize(("line", "message"), BAD)
def test_launch_accepts_only_known_keys_and_safe_values(setup, line: str, message: str) -> None:
    client, _ = setup
    for url in ("/api/launch/preview", "/api/launch"):
        r = client.post(url, json=form(extra=line))
        assert r.status_code == 400, (line, r.text)
        assert message in r.json()["error"], r.json()["error"]
    assert client.get("/api/launch/jobs").json()["jobs"] == []


def test_unknown_group_option_is_refused(setup) -> None:
    client, _ = setup
    r = client.post("/api/launch/preview", json=form(model="no_such_model"))
    assert r.status_code == 400 and "no_such_model" in r.json()["error"]
    assert client.post("/api/launch/preview", content=b"[1, 2]").status_code == 400
    assert client.post("/api/launch/preview", content=b"not json").status_code == 400


def test_upload_goes_to_the_data_folder(setup) -> None:
    client, tmp = setup
    r = client.put("/api/upload?name=mine.jsonl", content=b'{"instruction": "a", "output": "b"}\n')
    assert r.status_code == 200, r.text
    path = Path(r.json()["path"])
    stored = path if path.is_absolute() else Path(r.json()["path"])
    assert (tmp / "data" / "uploads" / "mine.jsonl").read_bytes().startswith(b'{"instruction"')
    assert stored.name == "mine.jsonl"
    again = client.put("/api/upload?name=mine.jsonl", content=b"{}\n").json()
    assert again["path"].endswith("mine-1.jsonl")  # never overwrites


@pytest.mark.parametrize(
    "name",
    ["../evil.jsonl", "..", "/etc/x.jsonl", "a/b.jsonl", ".hidden.jsonl", "x.exe", "x.sh", ""],
)
def test_bad_upload_names_are_refused(setup, name: str) -> None:
    client, tmp = setup
    r = client.put("/api/upload", params={"name": name}, content=b"{}\n")
    assert r.status_code == 400
    assert not (tmp / "evil.jsonl").exists()
    assert (
        not any((tmp / "data" / "uploads").glob("*"))
        if (tmp / "data" / "uploads").exists()
        else True
    )


def test_uploads_are_size_limited(setup) -> None:
    client, tmp = setup
    big = b"x" * 20_000  # the fixture's limit is 0.01 MB
    r = client.put("/api/upload?name=big.jsonl", content=big)
    assert r.status_code == 413 and "upload limit" in r.json()["error"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(20):
            yield b"y" * 1000

    r = client.put("/api/upload?name=big2.jsonl", content=chunks())
    assert r.status_code == 413
    assert client.put("/api/upload?name=empty.jsonl", content=b"").status_code == 400
    leftovers = list((tmp / "data" / "uploads").iterdir())
    assert leftovers == []  # nothing half-written is left


def test_uploads_never_follow_a_symlink_out(setup) -> None:
    client, tmp = setup
    (tmp / "elsewhere").mkdir()
    os.symlink(tmp / "elsewhere", tmp / "data" / "uploads")
    r = client.put("/api/upload?name=mine.jsonl", content=b"{}\n")
    assert r.status_code == 404
    assert not any((tmp / "elsewhere").iterdir())


def test_unknown_jobs_are_404(setup) -> None:
    client, _ = setup
    assert client.get("/api/launch/nope").status_code == 404
    assert client.post("/api/launch/nope/stop").status_code == 404
    assert client.post("/api/launch/nope/resume").status_code == 404


def wait_for(client: TestClient, job_id: str, statuses: set[str], timeout: float = 240) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/api/launch/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not reach {statuses}: {job}")


@pytest.mark.slow
def test_launch_a_tiny_run_and_watch_it_finish(setup) -> None:
    client, tmp = setup
    up = client.put("/api/upload?name=sums.jsonl", content=write_sums(tmp / "s.jsonl").read_bytes())
    extra = [t for t in TINY if not t.startswith(("model=", "trainer.max_steps"))]
    r = client.post(
        "/api/launch",
        json=form(
            data_path=str(tmp / "data" / "uploads" / "sums.jsonl"),
            max_steps="2",
            stages=["prepare", "train"],
            extra="\n".join(extra),
        ),
    )
    assert r.status_code == 200, r.text
    job = wait_for(client, r.json()["id"], {"finished", "failed", "interrupted"})
    log = client.get(f"/api/launch/{job['id']}").json()["log"]
    assert job["status"] == "finished", log[-3000:]
    assert "$ cd " in log and "python run.py" in log
    runs = client.get("/api/runs").json()["runs"]
    (run,) = runs
    assert run["path"] == job["run_path"] and run["status"] == "finished"
    assert up.json()["path"]

"""The OpenAI-compatible HTTP server: real requests over loopback with httpx."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from framework.manager import build_plugin_manager
from framework.model.generation import GenerationParams
from framework.resolvers import ROOT_DIR
from framework.run import Run
from framework.serve.engine import ChatEngine
from framework.serve.http import bind, build_server, create_app
from tests.conftest import compose_config
from tests.framework.tiny_run import finished_run

QUESTION = [{"role": "user", "content": "Add the numbers.\n\n3 + 4"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ChatEngine:
    # the adapter export: the base model is rebuilt from its tunesmith_config.yaml
    here = tmp_path_factory.mktemp("serve")
    cfg = compose_config(
        [f"serve.model={run_dir / 'export' / 'adapter'}", "serve.temperature=0"],
        run_dir=here,
    )
    return ChatEngine.from_run(Run(cfg=cfg, dir=here, plugins=build_plugin_manager()))


@pytest.fixture(scope="module")
def base_url(engine: ChatEngine) -> Iterator[str]:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = build_server(create_app(engine, max_tokens_limit=1000), "127.0.0.1")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


#: Seeded sampling: reproducible, and more telling than the tiny model's greedy newlines.
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "seed": 7}


def _answer(engine: ChatEngine, messages: list[dict], **params) -> str:
    return engine.complete(messages, GenerationParams(**SAMPLING, **params)).text


def _events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of a server-sent-events response, in order."""
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_models_lists_the_served_model(base_url: str, engine: ChatEngine) -> None:
    r = httpx.get(f"{base_url}/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [engine.model_id]
    assert engine.model_id == "tiny-lora-alpaca"  # the run's name, from its saved config


def test_chat_completion_answers_like_the_model(base_url: str, engine: ChatEngine) -> None:
    expected = _answer(engine, QUESTION, max_new_tokens=12)
    assert expected.strip(), "the tiny model should say something for this check to mean much"
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": engine.model_id, "messages": QUESTION, "max_tokens": 12, **SAMPLING},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected}
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_sends_chunks_then_done(base_url: str, engine: ChatEngine) -> None:
    expected = _answer(engine, QUESTION, max_new_tokens=12)
    payload = {
        "messages": QUESTION,
        "max_tokens": 12,
        **SAMPLING,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=payload, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(content) == expected
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] in {"stop", "length"} and all(f is None for f in finish[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(
    "payload,param,words",
    [
        ({"model": "tiny-lora-alpaca"}, "messages", "required"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "system"),
        ({"messages": QUESTION, "temperature": 5}, "temperature", "less than or equal to 2"),
        ({"messages": QUESTION, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": QUESTION, "max_tokens": 5000}, "max_tokens", "more than this server allows"),
        ({"messages": QUESTION, "n": 2}, "n", "only n=1"),
    ],
)
def test_bad_request_is_a_400_with_a_message(
    base_url: str, payload: dict, param: str, words: str
) -> None:
    r = httpx.post(f"{base_url}/v1/chat/completions", json=payload, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_broken_json_and_unknown_model(base_url: str, engine: ChatEngine) -> None:
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(
        f"{base_url}/v1/chat/completions", json={"model": "gpt-4o", "messages": QUESTION}
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert engine.model_id in r.json()["error"]["message"]


def test_a_second_request_during_a_generation_is_served(base_url: str, engine: ChatEngine) -> None:
    long_params = {"max_new_tokens": 200, "min_new_tokens": 200}
    expected_long = _answer(engine, QUESTION, **long_params)
    second = [{"role": "user", "content": "Add the numbers.\n\n2 + 2"}]
    expected_second = _answer(engine, second, max_new_tokens=8)

    # a slow model, so the first answer is surely still being generated
    inner = getattr(engine.model, "get_base_model", lambda: engine.model)()
    hook = inner.register_forward_pre_hook(lambda *_: time.sleep(0.01))
    try:
        first_payload = {
            "messages": QUESTION,
            **SAMPLING,
            "max_tokens": 200,
            "min_tokens": 200,
            "stream": True,
        }
        results: dict[str, httpx.Response] = {}
        with httpx.Client(base_url=base_url, timeout=120) as client:
            with client.stream("POST", "/v1/chat/completions", json=first_payload) as first:
                lines = first.iter_lines()
                # wait for the first content piece: the generation is under way
                received = []
                for line in lines:
                    if line.startswith("data: ") and '"content": ""' not in line:
                        received.append(line)
                        break
                health = httpx.get(f"{base_url}/health", timeout=5).json()
                assert health["busy"] is True  # the event loop answers during generation

                def send_second() -> None:
                    results["second"] = httpx.post(
                        f"{base_url}/v1/chat/completions",
                        json={"messages": second, **SAMPLING, "max_tokens": 8},
                        timeout=120,
                    )

                sender = threading.Thread(target=send_second)
                sender.start()
                deadline = time.monotonic() + 30
                while httpx.get(f"{base_url}/health", timeout=5).json()["active"] < 2:
                    assert time.monotonic() < deadline, "the second request never arrived"
                    time.sleep(0.02)
                received.extend(line for line in lines if line.startswith("data: "))
            sender.join(timeout=120)
    finally:
        hook.remove()

    assert received[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in received[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == expected_long
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    r = results["second"]
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected_second


def test_serve_stage_from_the_command_line(run_dir: Path, tmp_path: Path) -> None:
    """``python run.py stages=[serve] serve.model=<export> serve.port=0``, then Ctrl-C."""
    env = {**os.environ, "TUNESMITH_OUTPUT": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT_DIR / "run.py"),
            "stages=[serve]",
            f"serve.model={run_dir / 'export' / 'merged'}",
            "serve.port=0",
            "serve.model_id=sums",
        ],
        cwd=ROOT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            match = re.search(r"serving 'sums' at (http://127\.0\.0\.1:\d+/v1)", line)
            if match:
                url = match.group(1)
                break
            assert time.monotonic() < deadline
        assert url, proc.stderr.read()[-3000:]
        r = httpx.post(
            f"{url}/chat/completions",
            json={"model": "sums", "messages": QUESTION, "max_tokens": 4},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["model"] == "sums"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read()[-3000:]


def test_stop_strings_cut_the_answer(engine: ChatEngine) -> None:
    full = _answer(engine, QUESTION, max_new_tokens=24)
    stop = full[len(full) // 2 :][:2]
    assert stop.strip(), full
    cut = engine.complete(QUESTION, GenerationParams(**SAMPLING, max_new_tokens=24, stop=[stop]))
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_api_key_is_required_when_set(engine: ChatEngine) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(create_app(engine, api_key="sekret"))
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
    assert client.get("/health").status_code == 200

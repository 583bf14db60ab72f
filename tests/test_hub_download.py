"""Models from the Hub: ``model=hf model.path=<org>/<name>`` downloads into the HF cache.

The Hub is a small server on 127.0.0.1 (the endpoints huggingface_hub's ``snapshot_download``
uses: model info, tree listing, file resolve with HEAD and GET) serving the tiny model; runs
reach it through ``HF_ENDPOINT``. Nothing here contacts the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from framework.errors import ModelError
from framework.model.hub import download_model, looks_like_hub_id, resolve_model_path
from tests.conftest import ROOT_DIR, TINY, write_sums

REPO = "test-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """What the server serves (repo id -> folder) and every request it answered."""

    repos: dict[str, Path]
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: object) -> None:
            self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _not_found(self) -> None:
            self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

        def _route(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo = "/".join(parts[2:4])
                if repo not in hub.repos:
                    return self._not_found()
                files = hub.files(repo)
                if len(parts) == 4 or parts[4] == "revision":  # model info
                    siblings = [{"rfilename": name} for name in files]
                    return self._json({"id": repo, "sha": COMMIT, "siblings": siblings})
                if parts[4] == "tree":  # the recursive listing snapshot_download asks for
                    return self._json(
                        [
                            {"type": "file", "path": name, "size": f.stat().st_size,
                             "oid": hashlib.sha1(f.read_bytes()).hexdigest()}
                            for name, f in files.items()
                        ]
                    )  # fmt: skip
            if len(parts) >= 5 and parts[2] == "resolve":  # /{org}/{name}/resolve/{rev}/{file}
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if repo not in hub.repos:
                    return self._not_found()
                file = hub.files(repo).get(filename)
                if file is None:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                body = file.read_bytes()
                return self._send(
                    200,
                    body,
                    {
                        "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
                        "X-Repo-Commit": COMMIT,
                        "Content-Type": "application/octet-stream",
                    },
                )
            self._send(404)

        do_GET = do_HEAD = _route  # noqa: N815

    return Handler


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (conf/model/tiny.yaml's architecture) as a save_pretrained() folder."""
    from omegaconf import OmegaConf

    from plugins.models.tiny import build

    spec = OmegaConf.to_container(OmegaConf.load(ROOT_DIR / "conf/model/tiny.yaml").architecture)
    return build(tmp_path_factory.mktemp("tiny") / "tiny-llama", spec)


@pytest.fixture
def hub(tiny_model: Path) -> Iterator[FakeHub]:
    """A hub on 127.0.0.1 serving the tiny model as ``test-org/tiny-llama``."""
    hub = FakeHub(repos={REPO: tiny_model})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hub
    server.shutdown()
    server.server_close()


def _run(*args: str, hf_home: Path, hub: FakeHub, offline: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(
        HF_HOME=str(hf_home), HF_ENDPOINT=hub.url, NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )  # fmt: skip
    env.pop("HF_HUB_CACHE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, str(ROOT_DIR / "run.py"), *args],
        cwd=ROOT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_hub_ids_and_paths_are_told_apart() -> None:
    assert looks_like_hub_id("Qwen/Qwen2.5-0.5B-Instruct")
    assert looks_like_hub_id("gpt2")
    for path in ("/abs/model", "./model", "~/model", "a/b/c", "../x", "C:\\models\\x", "a--b/c"):
        assert not looks_like_hub_id(path), path


def test_a_local_folder_is_used_as_it_is(tiny_model: Path, tmp_path: Path) -> None:
    assert resolve_model_path(str(tiny_model)) == tiny_model
    missing = tmp_path / "no-such-model"
    assert resolve_model_path(str(missing)) == missing  # reported by check_model_dir


def test_offline_and_not_cached_says_how_to_get_it() -> None:
    from huggingface_hub import constants

    assert constants.is_offline_mode()  # tests/conftest.py sets HF_HUB_OFFLINE=1
    with pytest.raises(ModelError) as info:
        download_model("test-org/never-cached-7f3a")
    text = info.value.format()
    assert "not in the Hugging Face cache" in text and "HF_HUB_OFFLINE is set" in text
    assert "hf download test-org/never-cached-7f3a --local-dir models/never-cached-7f3a" in text
    assert "HF_ENDPOINT=https://hf-mirror.com" in text
    assert "model.path=test-org/never-cached-7f3a" in text


@pytest.mark.slow
def test_a_hub_model_downloads_trains_and_is_used_offline_from_the_cache(
    hub: FakeHub, tiny_model: Path, tmp_path: Path
) -> None:
    data = write_sums(tmp_path / "sums.jsonl")
    hf_home = tmp_path / "hf"
    common = [
        *[o for o in TINY if not o.startswith("model=")],
        "model=hf",
        "data=alpaca",
        f"data.path={data}",
        "trainer.max_steps=2",
        "evaluator.max_new_tokens=4",
    ]

    # online: downloaded into the standard cache under HF_HOME, then trained
    first = _run(
        *common, f"model.path={REPO}", "stages=[prepare,train]",
        f"paths.output_dir={tmp_path / 'out1'}", hf_home=hf_home, hub=hub, offline=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    snapshot = hf_home / "hub" / "models--test-org--tiny-llama" / "snapshots" / COMMIT
    assert (snapshot / "config.json").is_file() and (snapshot / "model.safetensors").is_file()
    assert f"GET /{REPO}/resolve/{COMMIT}/model.safetensors" in hub.requests
    assert list((tmp_path / "out1").rglob("checkpoints/last*.ckpt")), first.stderr[-2000:]

    # offline: the cached snapshot is used (prepare, not reusing the data prepared above, loads
    # the model: an id is no folder whose tokenizer can be read alone), the hub is not asked
    asked = len(hub.requests)
    second = _run(
        *common, f"model.path={REPO}", "stages=[prepare]", "data.cache=false",
        f"paths.output_dir={tmp_path / 'out2'}", hf_home=hf_home, hub=hub, offline=True,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert str(snapshot) in second.stdout + second.stderr  # "Model test-org/tiny-llama: <snapshot>"
    assert len(hub.requests) == asked, hub.requests[asked:]

    # online, a local folder: used as it is, never a request to the hub
    third = _run(
        *common, f"model.path={tiny_model}", "stages=[prepare]",
        f"paths.output_dir={tmp_path / 'out3'}", hf_home=tmp_path / "hf3", hub=hub,
        offline=False,
    )  # fmt: skip
    assert third.returncode == 0, third.stderr[-3000:]
    assert len(hub.requests) == asked, hub.requests[asked:]

    # offline and not cached: one clear message, no traceback
    fourth = _run(
        *common, "model.path=test-org/not-cached", "stages=[prepare]",
        f"paths.output_dir={tmp_path / 'out4'}", hf_home=hf_home, hub=hub, offline=True,
    )  # fmt: skip
    assert fourth.returncode == 2, fourth.stderr[-3000:]
    assert "Traceback" not in fourth.stderr
    assert "hf download test-org/not-cached --local-dir" in fourth.stderr
    assert "HF_ENDPOINT=https://hf-mirror.com" in fourth.stderr

    # online, no such model on the hub: says so, with the endpoint asked
    fifth = _run(
        *common, "model.path=test-org/no-such-model", "stages=[prepare]",
        f"paths.output_dir={tmp_path / 'out5'}", hf_home=hf_home, hub=hub, offline=False,
    )  # fmt: skip
    assert fifth.returncode == 2, fifth.stderr[-3000:]
    assert "Traceback" not in fifth.stderr
    assert f"neither a local model folder nor a model on {hub.url}" in fifth.stderr

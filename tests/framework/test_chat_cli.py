"""Terminal chat: multi-turn with the training chat template, /reset, /exit, streamed answers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framework.manager import build_plugin_manager
from framework.model.generation import GenerationParams
from framework.resolvers import ROOT_DIR
from framework.run import Run
from framework.serve.chat_cli import chat_loop
from framework.serve.engine import ChatEngine
from tests.conftest import compose_config
from tests.framework.tiny_run import finished_run

#: Seeded sampling so the tiny model says more than newlines, reproducibly.
PARAMS = GenerationParams(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=11)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(run_dir: Path) -> ChatEngine:
    # serve.model unset: the run in the run directory, rebuilt from its saved config.yaml
    cfg = compose_config([], run_dir=run_dir)
    return ChatEngine.from_run(Run(cfg=cfg, dir=run_dir, plugins=build_plugin_manager()))


def _answer(engine: ChatEngine, messages: list[dict]) -> str:
    return engine.complete(messages, PARAMS).text


class Recorder(ChatEngine):
    """The engine, also recording the prompt text the model saw at each turn."""

    def __init__(self, engine: ChatEngine) -> None:
        super().__init__(engine.model, engine.tokenizer, engine.model_id, engine.defaults)
        self.prompts: list[str] = []

    def stream(self, messages, params=None):  # noqa: ANN001, ANN201
        self.prompts.append(self.prompt(messages))
        return super().stream(messages, params)


def test_chat_is_multi_turn_with_the_training_template_and_resets(engine: ChatEngine) -> None:
    recorder = Recorder(engine)
    stdin = io.StringIO("3 + 4\n\n/help\n5 + 6\n/reset\n1 + 1\n/exit\nnot read\n")
    stdout = io.StringIO()
    history = chat_loop(recorder, PARAMS, system_prompt="Be brief.", stdin=stdin, stdout=stdout)
    out = stdout.getvalue()

    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 4"}]
    a1 = _answer(engine, first)
    second = [*first, {"role": "assistant", "content": a1}, {"role": "user", "content": "5 + 6"}]
    a2 = _answer(engine, second)
    third = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1"}]
    a3 = _answer(engine, third)
    assert a1.strip() and a2.strip()

    # turn 2 saw turn 1 (user and answer), rendered with the tokenizer's own chat template
    assert recorder.prompts == [
        engine.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in (first, second, third)
    ]
    for answer in (a1, a2, a3):
        assert f"assistant> {answer}\n" in out
    assert "(new conversation)" in out
    assert "unknown command /help" in out
    assert "not read" not in out  # /exit stopped reading
    assert history == [*third, {"role": "assistant", "content": a3}]


def test_chat_stage_in_a_terminal(run_dir: Path, engine: ChatEngine, tmp_path: Path) -> None:
    """``python run.py stages=[chat] hydra.run.dir=<finished run>``, driven through stdin."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("export", "checkpoints"))
    config_before = (run / "config.yaml").read_text()
    state_before = json.loads((run / "run_state.json").read_text())

    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT_DIR / "run.py"),
            "stages=[chat]",
            f"hydra.run.dir={run}",
            f"serve.max_tokens={PARAMS.max_new_tokens}",
            f"serve.temperature={PARAMS.temperature}",
            f"serve.top_p={PARAMS.top_p}",
            f"serve.seed={PARAMS.seed}",
        ],
        input="3 + 4\n5 + 6\n/exit\n",
        cwd=ROOT_DIR,
        env={**os.environ, "TUNESMITH_OUTPUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = [{"role": "user", "content": "3 + 4"}]
    a1 = _answer(engine, first)
    second = [*first, {"role": "assistant", "content": a1}, {"role": "user", "content": "5 + 6"}]
    a2 = _answer(engine, second)
    assert "chatting with tiny-lora-alpaca" in proc.stdout
    assert f"assistant> {a1}\n" in proc.stdout
    assert f"assistant> {a2}\n" in proc.stdout
    # the chat used the finished run as it was: config and state untouched, chat not recorded
    assert (run / "config.yaml").read_text() == config_before
    assert json.loads((run / "run_state.json").read_text()) == state_before

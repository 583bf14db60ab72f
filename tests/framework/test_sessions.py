"""Session stages (chat, serve) use a run without changing it and run every time."""

from __future__ import annotations

import json
from pathlib import Path

from framework.manager import build_plugin_manager
from framework.pipeline import run_pipeline
from tests.framework import session_plugin

PLUGIN = "plugins=[tests.framework.session_plugin]"


def test_chat_and_serve_are_session_stages() -> None:
    sessions = build_plugin_manager().sessions()
    assert {"chat", "serve"} <= sessions
    assert not {"prepare", "train", "evaluate", "export"} & sessions


def test_a_first_contract_session_declaration_still_counts() -> None:
    """``{"stage": [...], "session": [...]}`` (the first contract) marks a session stage."""
    manager = build_plugin_manager(extra=["tests.framework.session_plugin"], entry_points=False)
    assert "peek" in manager.sessions()


def test_a_session_stage_leaves_the_run_alone_and_runs_every_time(
    make_cfg, alpaca_file: Path
) -> None:
    session_plugin.CALLS.clear()
    base = ("model=tiny", "data=alpaca", f"data.path={alpaca_file}", PLUGIN)
    run_pipeline(make_cfg(*base, "stages=[prepare]"))
    run_dir = Path(make_cfg(*base).paths.run_dir)
    config = (run_dir / "config.yaml").read_text()
    state = json.loads((run_dir / "run_state.json").read_text())
    assert state == {"stages_done": ["prepare"], "status": "finished"}

    # another config (here: another seed) does not overwrite the run's config.yaml
    for _ in range(2):
        run_pipeline(make_cfg(*base, "stages=[peek]", "seed=7"))
    assert [str(run_dir)] * 2 == session_plugin.CALLS
    assert (run_dir / "config.yaml").read_text() == config
    assert json.loads((run_dir / "run_state.json").read_text()) == state

    # after recorded stages that are done already, the session stage still runs
    run_pipeline(make_cfg(*base, "stages=[prepare,peek]"))
    assert len(session_plugin.CALLS) == 3
    assert json.loads((run_dir / "run_state.json").read_text()) == state

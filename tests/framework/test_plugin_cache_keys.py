"""Cache keys cover plugin code: a helper module or a new version of a plugin package
invalidates prepared data and tokenised splits made with the old code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import DictConfig

from framework.data import token_cache
from framework.data.prepare import fingerprint, prepare, resolve_sources
from framework.manager import build_plugin_manager
from framework.run import Run
from tests.conftest import TINY, compose_config
from tests.framework.plugin_dists import forget, install_dist

PLUGIN = """
from framework import DataFormat, Objective, hookimpl
from ts_shout.helper import transform


@hookimpl
def tunesmith_provides():
    return [DataFormat("shout"), Objective("shout_sft")]


@hookimpl
def tunesmith_parse_record(name, record):
    if name != "shout":
        return None
    return {
        "messages": [
            {"role": "user", "content": record["q"]},
            {"role": "assistant", "content": transform(record["a"])},
        ]
    }


@hookimpl
def tunesmith_encode_example(name, example, tokenizer, cfg):
    if name != "shout_sft":
        return None
    ids = tokenizer(transform(example["messages"][-1]["content"]))["input_ids"]
    return {"input_ids": ids, "labels": ids}
"""

LOUD = "def transform(text):\n    return text.upper()\n"
SOFT = "def transform(text):\n    return text.lower() + '...'\n"


def _install(site: Path, version: str, helper: str) -> None:
    install_dist(
        site,
        "ts-shout",
        version,
        {
            "ts_shout/__init__.py": "",
            "ts_shout/plugin.py": PLUGIN,
            "ts_shout/helper.py": helper,
        },
        {"shout": "ts_shout.plugin"},
    )
    forget("ts_shout")  # a new process would import the new code


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = tmp_path / "site"
    _install(site, "1.0.0", LOUD)
    monkeypatch.syspath_prepend(str(site))
    yield site
    forget("ts_shout")


def _cfg(tmp_path: Path) -> DictConfig:
    data = tmp_path / "shout.jsonl"
    if not data.exists():
        rows = [{"q": f"Say the number {i} please", "a": f"Number {i} here"} for i in range(30)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return compose_config(
        [
            *TINY,
            "data=alpaca",
            f"data.path={data}",
            "data.format=shout",
            "data.clean.near_dedup=false",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.spot_check=0",
        ],
        run_dir=tmp_path / "run",
    )


def _run(cfg: DictConfig) -> Run:
    return Run(cfg=cfg, dir=Path(cfg.paths.run_dir), plugins=build_plugin_manager())


def _answers(run: Run) -> set[str]:
    rows = [
        json.loads(line)
        for split in ("train", "val", "test")
        for line in (run.data_dir / f"{split}.jsonl").read_text().splitlines()
    ]
    return {r["messages"][-1]["content"] for r in rows}


def _fingerprint(cfg: DictConfig) -> str:
    run = _run(cfg)
    return fingerprint(run, resolve_sources(cfg.data))


def test_editing_a_helper_module_rebuilds_the_prepared_data(site: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run = _run(cfg)
    run.dir.mkdir(parents=True)
    prepare(run)
    assert "NUMBER 3 HERE" in _answers(run)
    before = fingerprint(run, resolve_sources(cfg.data))

    _install(site, "1.0.0", SOFT)  # only the helper changes, not the hook module
    run = _run(cfg)
    assert fingerprint(run, resolve_sources(cfg.data)) != before
    prepare(run)
    report = json.loads((run.data_dir / "report.json").read_text())
    assert not report.get("reused")
    assert "number 3 here..." in _answers(run)


def test_a_new_version_alone_changes_the_prepare_key(site: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    before = _fingerprint(cfg)
    assert _fingerprint(cfg) == before  # stable
    _install(site, "1.0.1", LOUD)  # same files, new version
    assert _fingerprint(cfg) != before


def test_the_token_cache_key_covers_helpers_and_versions(site: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    tokenizer = _run(cfg).ensure_model()[1]

    def key() -> str:
        return token_cache.setup_digest(tokenizer, cfg, build_plugin_manager())

    first = key()
    assert key() == first
    _install(site, "1.0.0", SOFT)
    edited = key()
    assert edited != first
    _install(site, "1.0.1", SOFT)
    assert key() != edited


def test_an_in_tree_plugin_is_hashed_with_its_whole_subpackage() -> None:
    import plugins.files.jsonfile
    import plugins.stages
    from framework.manager import _package_digest

    # jsonfile's reader lives in plugins/files/readers.py: the whole folder counts
    assert _package_digest(plugins.files.jsonfile)[0] == "plugins.files"
    assert _package_digest(plugins.stages)[0] == "plugins.stages"

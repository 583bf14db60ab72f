"""Every plugin name a run picks is checked at start-up, before any stage does any work.

The names checked are those the stages about to run use (each Stage descriptor declares
them in ``uses``): ``stages=[prepare]`` does not look at ``evaluator.metrics``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from framework.errors import ConfigError
from framework.manager import build_plugin_manager
from framework.pipeline import check_names, objective_name
from framework.run import Run
from tests.conftest import TINY, compose_config, run_cli, write_sums


def _check(cfg, extra: tuple[str, ...] = ()) -> None:
    plugins = build_plugin_manager(extra=list(extra), entry_points=False)
    check_names(cfg, plugins, [str(s) for s in cfg.stages])


def _cfg(*overrides: str, tmp_path: Path):
    return compose_config([*TINY, *overrides], run_dir=tmp_path / "run")


def test_a_misspelled_metric_stops_the_run_before_any_work(tmp_path: Path) -> None:
    proc = run_cli(
        *TINY,
        "evaluator.metrics=[perplexity,exact_macth]",
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    message = proc.stderr[proc.stderr.index("error:") :]
    assert "No plugin serves metric 'exact_macth'. Did you mean 'exact_match'?" in message
    assert "evaluator.metrics[1]" in message
    # nothing was prepared, trained or recorded
    for run in (tmp_path / "runs").glob("*"):
        assert not (run / "data").exists() and not (run / "run_state.json").exists()


def test_every_wrong_name_is_listed_in_one_error(tmp_path: Path) -> None:
    data = write_sums(tmp_path / "sums.jsnl")
    cfg = _cfg(
        "data=alpaca",
        f"data.path={data}",
        "data.format=alpacca",
        "method.name=lroa",
        "evaluator.metrics=[bleu,rogue]",
        "export.formats=[merge]",
        tmp_path=tmp_path,
    )
    with open_dict(cfg):
        cfg.objective = "sfft"
    with pytest.raises(ConfigError) as err:
        _check(cfg)
    text = str(err.value)
    assert "6 names in the config are not served by any plugin" in text
    for part in (
        "data.path: No plugin reads files like 'sums.jsnl' (suffix .jsnl). Did you mean '.jsonl'?",
        "data.format: No plugin serves format 'alpacca'. Did you mean 'alpaca'?",
        "objective: No plugin serves objective 'sfft'. Did you mean 'sft'?",
        "method.name: No plugin serves method 'lroa'. Did you mean 'lora'?",
        "evaluator.metrics[1]: No plugin serves metric 'rogue'. Did you mean 'rouge'?",
        "export.formats[0]: No plugin serves export 'merge'. Did you mean 'merged'?",
    ):
        assert part in text, (part, text)


def test_only_the_names_of_the_stages_that_run_are_checked(tmp_path: Path) -> None:
    cfg = _cfg("stages=[prepare]", "evaluator.metrics=[rogue]", "export.formats=[merge]",
               tmp_path=tmp_path)  # fmt: skip
    _check(cfg)  # prepare does not read evaluator.metrics or export.formats
    with open_dict(cfg):
        cfg.stages = ["prepare", "evaluate"]
    with pytest.raises(ConfigError, match="metric 'rogue'"):
        _check(cfg)


def test_unknown_stage_and_names_of_known_stages_at_once(tmp_path: Path) -> None:
    cfg = _cfg("stages=[prepare,trian]", "data.format=alpacca", tmp_path=tmp_path)
    with pytest.raises(ConfigError) as err:
        _check(cfg)
    text = str(err.value)
    assert "stages: No plugin serves stage 'trian'. Did you mean 'train'?" in text
    assert "data.format: No plugin serves format 'alpacca'" in text


def test_source_formats_and_split_files_are_checked(tmp_path: Path) -> None:
    good = write_sums(tmp_path / "a.jsonl")
    cfg = _cfg(
        "data=mixed",
        f"data.sources=[{{path: '{good}', format: alpaca}}, {{path: '{good}', format: sharegtp}}]",
        f"data.test_path={tmp_path / 'test.parket'}",
        tmp_path=tmp_path,
    )
    with pytest.raises(ConfigError) as err:
        _check(cfg)
    text = str(err.value)
    assert "data.sources[1].format: No plugin serves format 'sharegtp'" in text
    assert "data.test_path: No plugin reads files like 'test.parket'" in text
    assert "Did you mean '.parquet'?" in text


def test_a_name_served_by_a_disabled_plugin_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNESMITH_DISABLE_PLUGINS", "plugins.metrics.bleu")
    cfg = _cfg("evaluator.metrics=[bleu]", tmp_path=tmp_path)
    with pytest.raises(ConfigError) as err:
        _check(cfg)
    text = str(err.value)
    assert "served by the plugin plugins.metrics.bleu, which is disabled" in text
    assert "evaluator.metrics[0]" in text


def test_an_empty_metric_list_is_caught_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No metric is selected"):
        _check(_cfg("evaluator.metrics=[]", tmp_path=tmp_path))


def test_the_objective_may_be_a_name_or_a_group(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path=tmp_path)
    with open_dict(cfg):
        cfg.objective = "sft"
    assert objective_name(cfg) == "sft"
    with open_dict(cfg):
        cfg.objective = OmegaConf.create({"name": "sfft", "beta": 0.1})
    assert objective_name(cfg) == "sfft"
    with pytest.raises(ConfigError, match="objective 'sfft'. Did you mean 'sft'"):
        _check(cfg)


QA_PLUGINS = {
    # A reader of any .txt file (one text per line), and a more specific reader of .qa.txt
    # files; the .txt reader is registered last, so pluggy would ask it first.
    "ts_qa_reader": """
from framework import FileType, hookimpl

@hookimpl
def tunesmith_provides():
    return [FileType(".qa.txt")]

@hookimpl
def tunesmith_read_file(path):
    if not path.name.lower().endswith(".qa.txt"):
        return None
    q, a = path.read_text().split("|")
    return [(1, {"instruction": q.strip(), "output": a.strip()})]
""",
    "ts_txt_reader": """
from framework import FileType, hookimpl

@hookimpl
def tunesmith_provides():
    return [FileType(".txt")]

@hookimpl
def tunesmith_read_file(path):
    if path.suffix.lower() != ".txt":
        return None
    return [(i + 1, {"text": line}) for i, line in enumerate(path.read_text().splitlines())]
""",
}


def test_the_longest_file_suffix_picks_the_reader(tmp_path: Path, monkeypatch) -> None:
    from framework.data.prepare import read_file

    for name, source in QA_PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    qa = tmp_path / "one.qa.txt"
    qa.write_text("What is 2 + 2? | 4")
    notes = tmp_path / "notes.txt"
    notes.write_text("first\nsecond\n")
    cfg = _cfg("data=alpaca", f"data.path={qa}", tmp_path=tmp_path)
    plugins = build_plugin_manager(extra=list(QA_PLUGINS), entry_points=False)
    check_names(cfg, plugins, ["prepare"])  # .qa.txt is served
    run = Run(cfg=cfg, dir=tmp_path / "run", plugins=plugins)
    assert list(read_file(run, qa, cfg.data)) == [
        (1, {"instruction": "What is 2 + 2?", "output": "4"})
    ]
    assert [r["text"] for _, r in read_file(run, notes, cfg.data)] == ["first", "second"]
    for name in QA_PLUGINS:
        sys.modules.pop(name, None)


def test_the_prepare_cli_reads_a_multi_part_suffix(tmp_path: Path) -> None:
    for name, source in QA_PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(source)
    for i in range(12):
        (tmp_path / f"q{i}.qa.txt").write_text(f"What is {i} + 1? | {i + 1}")
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={tmp_path}/*.qa.txt",
        "data.clean.near_dedup=false",
        "stages=[prepare]",
        f"plugins=[{','.join(QA_PLUGINS)}]",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out"), "PYTHONPATH": str(tmp_path)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "out" / "runs").iterdir()
    rows = [
        json.loads(line)
        for split in ("train", "val", "test")
        for line in (run / "data" / f"{split}.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 12 and all("messages" in r for r in rows)

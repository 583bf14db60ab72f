"""Each example is tokenised once per run: the prepare stage's encodings serve the data report
and the train stage of the same process, with the same numbers and tokens as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from framework.data import token_cache
from framework.data.prepare import prepare
from framework.data.report import draw_pending_plots, length_stats
from framework.manager import build_plugin_manager
from framework.run import Run
from tests.conftest import compose_config


def _rows(n: int) -> list[dict]:
    """Alpaca records of varied length: a few are longer than max_length=160."""
    words = [
        "river",
        "mountain",
        "quiet",
        "lantern",
        "copper",
        "violet",
        "harbor",
        "meadow",
        "silver",
        "thunder",
    ]
    rows = []
    for i in range(n):
        length = 3 + (i * 7) % 40
        text = " ".join(words[(i + j) % len(words)] for j in range(length))
        rows.append({"instruction": f"Repeat item {i}.", "output": f"{text} #{i}"})
    return rows


def _make_run(tmp_path: Path, *overrides: str) -> Run:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(40)), encoding="utf-8")
    cfg = compose_config(
        [
            "model=tiny",
            "data=alpaca",
            f"data.path={path}",
            "data.max_length=160",
            f"data.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
        run_dir=tmp_path / "run",
    )
    return Run(cfg=cfg, dir=tmp_path / "run", plugins=build_plugin_manager(entry_points=False))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the tokenizer calls of the sft objective (one per encoded example)."""
    import plugins.objectives.sft as sft

    calls: list[int] = []
    real = sft.encode_chat

    def counting(*args, **kwargs):
        calls.append(kwargs.get("max_length", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(sft, "encode_chat", counting)
    token_cache.remember({})
    yield calls
    token_cache.remember({})


def _full_length(run: Run, example: dict) -> int:
    from omegaconf import open_dict

    cfg = run.cfg.copy()
    with open_dict(cfg):
        cfg.data.max_length = 10**9
    enc = run.hook.tunesmith_encode_example(
        name="sft", example=example, tokenizer=run.tokenizer or run.ensure_model()[1], cfg=cfg
    )
    return len(enc["input_ids"])


def _datamodule(run: Run):
    from framework.data.datamodule import FineTuneDataModule

    _, tokenizer = run.ensure_model()  # the train stage's own tokenizer
    dm = FineTuneDataModule(run.splits, run.cfg)
    dm.connect(tokenizer, run.plugins)
    dm.setup()
    return dm


@pytest.mark.parametrize("cache", [True, False])
def test_every_example_is_tokenised_once_for_report_and_training(
    tmp_path: Path, counted: list[int], cache: bool
) -> None:
    run = _make_run(tmp_path, f"data.cache={str(cache).lower()}")
    splits = prepare(run)
    every = [e for s in ("train", "val", "test") for e in splits[s]]
    max_length = int(run.cfg.data.max_length)
    full = [n for n in counted if n > max_length]
    cut = [n for n in counted if n == max_length]
    assert len(full) == len(every)  # once at full length for the report, per example
    report = json.loads((run.data_dir / "report.json").read_text("utf-8"))
    over = report["tokens"]["over_max_length"]
    assert 0 < over < len(every)
    # only the training and validation examples over max_length are encoded again, cut
    long = [e for s in ("train", "val") for e in splits[s] if _full_length(run, e) > max_length]
    assert 0 < len(cut) == len(long) < over

    before = len(counted)
    dm = _datamodule(run)
    assert len(counted) == before  # training took the prepare stage's encodings
    assert len(dm.encoded["train"]) == len(splits["train"])
    if cache:  # the token cache on disk is still written for later runs
        assert list((tmp_path / "cache" / "encoded").glob("*.npz"))


def test_report_and_training_tokens_equal_encoding_each_example_anew(
    tmp_path: Path, counted: list[int]
) -> None:
    run = _make_run(tmp_path, "data.cache=false")
    splits = prepare(run)
    reused = _datamodule(run).encoded

    # the old way: every example through the objective's hook, once at full length for the
    # report, once cut to max_length for training
    hook, cfg, tokenizer = run.hook.tunesmith_encode_example, run.cfg, run.tokenizer
    from omegaconf import open_dict

    full_cfg = cfg.copy()
    with open_dict(full_cfg):
        full_cfg.data.max_length = 10**9
    report = json.loads((run.data_dir / "report.json").read_text("utf-8"))
    for split in ("train", "val", "test"):
        lengths = [
            len(hook(name="sft", example=e, tokenizer=tokenizer, cfg=full_cfg)["input_ids"])
            for e in splits[split]
        ]
        assert report["tokens"][split] == length_stats(lengths)
    for split in ("train", "val"):
        anew = [hook(name="sft", example=e, tokenizer=tokenizer, cfg=cfg) for e in splits[split]]
        assert len(anew) == len(reused[split])
        for old, new in zip(anew, reused[split], strict=True):
            assert np.array_equal(old["input_ids"], new["input_ids"])
            assert np.array_equal(old["labels"], new["labels"])
            assert new["input_ids"].dtype == np.int32


def test_histogram_waits_for_the_end_of_training_when_asked(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    prepare(run, defer_plots=True)
    png = run.data_dir / "lengths.png"
    assert not png.exists() and (run.data_dir / "report.json").exists()
    draw_pending_plots()
    assert png.read_bytes()[:4] == b"\x89PNG"
    fp = json.loads((run.data_dir / "report.json").read_text("utf-8"))["fingerprint"]
    assert (tmp_path / "cache" / fp / "lengths.png").is_file()  # the cached copy has it too

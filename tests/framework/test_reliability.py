"""Reliability building blocks: resumable data order, atomic saves, locks, checks, plugins.

The end-to-end behaviour (kill and resume a real run, finished runs, NaN) is in
test_reliability_resume.py; broken inputs through the CLI are in tests/test_broken_inputs.py.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from framework.data.sampler import ResumableDataLoader
from framework.errors import ConfigError, ModelError, TunesmithError
from framework.manager import build_plugin_manager
from framework.run import TMP_PREFIX, SaveError, atomic_path, remove_stale_temps, run_lock
from framework.train.checkpointing import AtomicCheckpointIO
from tests.conftest import ROOT_DIR, compose_config

# --------------------------------------------------------------------------- data order


def _batches(loader: ResumableDataLoader, n: int | None = None) -> list[list[int]]:
    """The batches ``loader`` serves (only the first ``n``, drawn one by one like Lightning)."""
    return [batch.tolist() for batch in itertools.islice(loader, n)]


def test_resumed_loader_serves_the_rest_of_the_epoch_in_the_same_order() -> None:
    data = list(range(23))
    reference = ResumableDataLoader(data, batch_size=4, seed=7)
    reference.sampler.set_epoch(1)
    whole_epoch = _batches(reference)
    assert sorted(sum(whole_epoch, [])) == data

    first = ResumableDataLoader(data, batch_size=4, seed=7, epoch=1)
    seen = _batches(first, n=2)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 2

    resumed = ResumableDataLoader(data, batch_size=4, seed=7, epoch=1)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # Lightning does this before the epoch continues
    assert seen + _batches(resumed) == whole_epoch
    assert resumed.state_dict()["batches"] == len(whole_epoch)


def test_each_epoch_has_its_own_order_fixed_by_the_seed() -> None:
    data = list(range(16))
    a, b = ResumableDataLoader(data, batch_size=4, seed=1), ResumableDataLoader(data, 4, seed=1)
    orders = []
    for epoch in (0, 1):
        a.sampler.set_epoch(epoch)
        b.sampler.set_epoch(epoch)
        orders.append(_batches(a))
        assert orders[-1] == _batches(b)
    assert orders[0] != orders[1]


def test_a_saved_position_from_another_epoch_or_other_data_is_ignored() -> None:
    data = list(range(12))
    loader = ResumableDataLoader(data, batch_size=4, seed=3, epoch=2)
    loader.load_state_dict({"epoch": 1, "batches": 2, "num_examples": 12, "batch_size": 4})
    assert len(_batches(loader)) == 3  # a whole epoch: extending a run starts a fresh epoch
    loader.load_state_dict({"epoch": 2, "batches": 2, "num_examples": 99, "batch_size": 4})
    assert len(_batches(loader)) == 3


# --------------------------------------------------------------------------- atomic saves


def _ckpt(value: float) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), value)}, "global_step": int(value)}


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one(
    tmp_path: Path, monkeypatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_ckpt(1.0), path)
    before = path.read_bytes()

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # writes part of the file, then the disk is full
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SaveError) as err:
        io.save_checkpoint(_ckpt(2.0), path)
    text = err.value.format()
    assert "No space left on device" in text
    assert f"The previous checkpoint is intact: {path}" in text
    assert "GiB free" in text and "paths.output_dir" in text
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no half file left
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["global_step"] == 1


def test_a_kill_during_a_save_never_leaves_a_file_that_looks_whole(tmp_path: Path) -> None:
    path = tmp_path / "adapter"
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"old")
    # The process dies in the middle of writing the new version: simulated by an exception
    # that nothing catches (SIGKILL skips even the cleanup, which the next test covers).
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"ne")
        raise KeyboardInterrupt
    assert (path / "weights.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_leftovers_of_a_killed_save_are_removed_on_the_next_run(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"whole")
    stale = ckpts / f"{TMP_PREFIX}last.ckpt.abc123"
    stale.mkdir()
    (stale / "last.ckpt").write_bytes(b"hal")  # what SIGKILL during a save leaves
    assert remove_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]


def test_checkpoints_load_with_weights_only_and_refuse_pickled_code(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    good = tmp_path / "good.ckpt"
    io.save_checkpoint(_ckpt(3.0), good)
    assert torch.equal(io.load_checkpoint(good)["state_dict"]["w"], torch.full((64, 64), 3.0))

    evil = tmp_path / "evil.ckpt"
    torch.save({"payload": Path("x")}, evil)  # an arbitrary object, run by unpickling
    with pytest.raises(TunesmithError, match="cannot be loaded safely"):
        io.load_checkpoint(evil)

    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(TunesmithError, match="damaged"):
        io.load_checkpoint(cut)


def test_no_torch_load_without_weights_only() -> None:
    pattern = re.compile(r"torch\.load\(")
    offenders = []
    for folder in ("framework", "plugins"):
        for path in (ROOT_DIR / folder).rglob("*.py"):
            for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line) and "weights_only=True" not in line:
                    offenders.append(f"{path.relative_to(ROOT_DIR)}:{line_no}")
    assert not offenders, offenders


def test_two_processes_never_write_one_run(tmp_path: Path) -> None:
    with run_lock(tmp_path), pytest.raises(TunesmithError, match="already running"):  # noqa: SIM117
        with run_lock(tmp_path):
            pass
    with run_lock(tmp_path):  # released when the holder is done
        pass


# --------------------------------------------------------------------------- config checks


def test_config_check_names_the_key_and_its_near_match(tmp_path: Path) -> None:
    from framework.cli import CONFIG_DIR
    from framework.config_check import check_command_line

    cases = {
        "trainer.max_stepz=3": "Did you mean 'trainer.max_steps'?",
        "optim.learning_rate=1e-4": "Did you mean 'optim.lr'?",
        "epochs=2": "Did you mean 'trainer.max_epochs'?",
        "data.batch_size=abc": "Wrong type for data.batch_size",
        "evaluator.do_sample=maybe": "must be true or false",
        "model=tiniy": "Did you mean 'tiny'?",
    }
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            check_command_line(["model=tiny", override], CONFIG_DIR)
        assert expected in err.value.format(), (override, err.value.format())
    # accepted: a union-typed Trainer argument, an added key, a sweep, a null
    check_command_line(
        ["trainer.devices=auto", "+extra.note=x", "-m", "optim.lr=1e-4,3e-4", "seed=null"],
        CONFIG_DIR,
    )


# --------------------------------------------------------------------------- models


def _tiny_dir(tmp_path: Path) -> Path:
    from plugins.models.tiny import build

    spec = compose_config(["model=tiny"]).model.architecture
    return build(tmp_path / "tiny", dict(spec))


def test_a_model_too_large_for_memory_warns_with_the_numbers(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import framework.model.loading as models

    folder = _tiny_dir(tmp_path)
    cfg = compose_config(["model=hf", f"model.path={folder}", "method=full"])
    monkeypatch.setattr(models, "available_memory", lambda device: (10_000, "free RAM"))
    models._warned.clear()
    with caplog.at_level(logging.WARNING, logger="framework.model.loading"):
        model, _ = models.load_pretrained(folder, cfg)
    assert model is not None  # a warning, not a refusal
    text = caplog.text
    assert "will likely not fit in memory" in text
    assert re.search(r"0M parameters: about [\d.]+ [GM]iB to load and [\d.]+ [GM]iB to train", text)
    assert "method=full" in text and "free RAM" in text and "method=lora" in text


def test_a_tokenizer_without_chat_template_falls_back_explicitly_or_stops(
    tmp_path: Path, caplog
) -> None:
    from framework.data.chat import FALLBACK_CHAT_TEMPLATE
    from framework.model.loading import load_pretrained

    folder = _tiny_dir(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)

    cfg = compose_config(["model=hf", f"model.path={folder}"])
    with caplog.at_level(logging.WARNING, logger="framework.model.loading"):
        _, tok = load_pretrained(folder, cfg)
    assert tok.chat_template == FALLBACK_CHAT_TEMPLATE
    assert "has no chat template: tunesmith uses its ChatML template" in caplog.text

    cfg = compose_config(["model=hf", f"model.path={folder}", "model.chat_template=error"])
    with pytest.raises(ModelError, match="has no chat template"):
        load_pretrained(folder, cfg)


def test_remote_code_is_off_unless_asked(tmp_path: Path) -> None:
    for option in ("hf", "smollm2", "tiny"):
        assert compose_config([f"model={option}"]).model.trust_remote_code is False


# --------------------------------------------------------------------------- plugins


def test_a_plugin_that_fails_to_import_is_named_and_the_rest_still_work(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    (tmp_path / "ts_broken_plugin.py").write_text("import not_a_module_anywhere\n")
    dist = tmp_path / "ts_broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ts-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tunesmith]\nbroken = ts_broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as before logging is set up

    pm = build_plugin_manager()
    assert "broken" in pm.failed and "not_a_module_anywhere" in pm.failed["broken"]
    assert {"lora", "full"} <= set(pm.names("method"))
    err = capsys.readouterr().err
    assert "plugin 'broken' (entry point 'broken = ts_broken_plugin' of ts-broken 0.1)" in err
    assert "TUNESMITH_DISABLE_PLUGINS=broken" in err
    with pytest.raises(ConfigError, match="plugins that failed to load: broken"):
        pm.require("method", "nope")

    monkeypatch.setenv("TUNESMITH_DISABLE_PLUGINS", "broken,lroa")
    pm = build_plugin_manager()
    assert "broken" not in pm.failed
    assert "names 'lroa', but no plugin has that name" in capsys.readouterr().err


def test_ctrl_c_outside_training_behaves_as_usual() -> None:
    import signal
    import time

    from framework.train.resilience import SaveOnInterrupt

    callback = SaveOnInterrupt()
    original = signal.getsignal(signal.SIGINT)
    callback._install()
    assert signal.getsignal(signal.SIGINT) == callback._handle
    callback._restore()
    assert signal.getsignal(signal.SIGINT) is original
    signal.signal(signal.SIGINT, callback._handle)  # what Lightning's teardown can leave
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is original

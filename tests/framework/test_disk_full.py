"""A full disk is a message that names the file and the free space, never a traceback."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from framework.run import SaveError, disk_error, write_json
from tests.conftest import compose_config, write_sums
from tests.helpers import new_run

NO_SPACE = "[Errno 28] No space left on device"


def _prepare(run_dir: Path, data: Path, cache: Path):
    from framework.data.prepare import prepare

    cfg = compose_config(
        ["model=tiny", "data=alpaca", f"data.path={data}", f"data.cache_dir={cache}"],
        run_dir=run_dir,
    )
    run = new_run(cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    return prepare(run), run


def test_copying_prepared_data_from_the_cache_onto_a_full_disk_is_a_clear_error(
    tmp_path: Path, monkeypatch
) -> None:
    data, cache = write_sums(tmp_path / "sums.jsonl"), tmp_path / "cache"
    _prepare(tmp_path / "first", data, cache)  # fills the cache
    assert any(cache.iterdir())

    def full_disk(src, dst, *args, **kwargs):  # what copytree raises: every errno in a list
        Path(dst).mkdir(parents=True, exist_ok=True)
        raise shutil.Error(
            [
                (str(Path(src) / "train.jsonl"), str(Path(dst) / "train.jsonl"), NO_SPACE),
                (str(Path(src) / "val.jsonl"), str(Path(dst) / "val.jsonl"), NO_SPACE),
            ]
        )

    monkeypatch.setattr(shutil, "copytree", full_disk)
    second = tmp_path / "second"
    with pytest.raises(SaveError) as err:
        _prepare(second, data, cache)
    text = err.value.format()
    assert "Cannot write the prepared data" in text and "No space left on device" in text
    assert str(second / "data" / "train.jsonl") in text  # the real file, not a temporary one
    assert " free of " in text and "paths.output_dir" in text
    assert "shutil.Error" not in text and "[(" not in text
    assert not (second / "data").exists()  # nothing half-copied looks like prepared data


def test_a_full_disk_names_the_file_and_the_free_space(tmp_path: Path, monkeypatch) -> None:
    from framework.cli import as_user_error

    target = tmp_path / "run" / "metrics.json"

    def no_space(self, *args, **kwargs):  # a write() that fails names no file itself
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(OSError) as raised:
        write_json(target, {"a": 1})
    err = as_user_error(raised.value)
    assert isinstance(err, SaveError)
    text = err.format()
    assert f"Cannot write {target}: No space left on device" in text
    assert " free of " in text and "paths.output_dir" in text
    assert "Cannot write a file" not in text


def test_a_copytree_error_reaching_the_top_is_a_message_too(tmp_path: Path) -> None:
    from framework.cli import as_user_error

    dst = tmp_path / "out" / "model.safetensors"
    err = as_user_error(shutil.Error([(str(tmp_path / "a"), str(dst), NO_SPACE)]))
    assert isinstance(err, SaveError)
    assert f"Cannot write {dst}: No space left on device" in err.format()
    # an error that is not the environment's stays a bug (a traceback for the developer)
    assert as_user_error(shutil.Error([("a", "b", "[Errno 2] No such file")])) is None
    assert disk_error(ValueError("x")) is None


def test_free_space_is_given_in_a_unit_that_fits() -> None:
    from framework.run import _size

    assert _size(200 * 1024) == "200.0 KiB"
    assert _size(3 * 2**20) == "3.0 MiB"
    assert _size(5 * 2**30) == "5.0 GiB"
    assert _size(12) == "12 bytes"

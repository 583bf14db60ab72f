"""Deliberately broken inputs through the real CLI: one short message, exit status 2.

Every case checks what the user reads (what is wrong, where, the near match) and that no
traceback is shown; the traceback comes only on request (HYDRA_FULL_ERROR=1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.errors import ModelError
from framework.model.loading import check_model_dir
from tests.conftest import TINY, run_cli


def _fails_cleanly(proc, *expected: str, status: int = 2) -> str:
    err = proc.stderr
    assert proc.returncode == status, (proc.returncode, err[-3000:], proc.stdout[-2000:])
    assert "Traceback" not in err + proc.stdout, err[-3000:]
    message = err[err.index("error:") :]
    for text in expected:
        assert text in message, (text, message)
    assert len(message.splitlines()) <= 8, message  # short
    return message


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override,expected",
    [
        (
            "trainer.max_stepz=3",
            ["Unknown config key 'trainer.max_stepz'. Did you mean 'trainer.max_steps'?"],
        ),
        (
            "data.batch_size=ten",
            ["Wrong type for data.batch_size: got 'ten'", "must be a whole number"],
        ),
        (
            "method=lroa",
            [
                "Could not find 'method/lroa'",
                "Did you mean 'lora'? Options: dora, freeze, full, ia3, lora,",
            ],
        ),
        ("data.path=???", ["data.path", "must be given"]),
        ("optim.lr=[1e-4", ["Cannot read the override 'optim.lr=[1e-4'"]),
    ],
)
def test_config_mistakes_get_one_short_message(
    override: str, expected: list[str], tmp_path: Path
) -> None:
    proc = run_cli(*TINY, override, env={"TUNESMITH_OUTPUT": str(tmp_path)})
    _fails_cleanly(proc, *expected)
    assert not (tmp_path / "runs").exists() or override == "data.path=???"


def test_a_sweep_with_a_misspelled_key_stops_before_any_job(tmp_path: Path) -> None:
    proc = run_cli("-m", *TINY, "method.rr=4,8", env={"TUNESMITH_OUTPUT": str(tmp_path)})
    _fails_cleanly(proc, "Unknown config key 'method.rr'. Did you mean 'method.r'?")
    assert not (tmp_path / "multirun").exists()


def test_the_full_traceback_comes_on_request(tmp_path: Path) -> None:
    proc = run_cli(
        *TINY, "seedd=1", env={"TUNESMITH_OUTPUT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "Did you mean 'seed'?" in proc.stderr


# --------------------------------------------------------------------------- data


def test_a_missing_data_file(tmp_path: Path) -> None:
    proc = run_cli(
        *TINY,
        "data=alpaca",
        "data.path=no/such/file.jsonl",
        "stages=[prepare]",
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
    )
    _fails_cleanly(proc, "No data file matches 'no/such/file.jsonl'", "data.path")


def test_an_empty_data_file_stops_before_training(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    proc = run_cli(
        *TINY, "data=alpaca", f"data.path={empty}", env={"TUNESMITH_OUTPUT": str(tmp_path)}
    )
    _fails_cleanly(proc, "holds no record", str(empty))
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "checkpoints").exists()


def test_a_malformed_record_names_file_line_and_reason(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"instruction": "Say hi.", "output": "hi"})
    data.write_text(f"{good}\n{good}\n{{'instruction': 'single quotes'}}\n")
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={data}",
        "data.on_error=raise",
        "stages=[prepare]",
        env={"TUNESMITH_OUTPUT": str(tmp_path)},
    )
    _fails_cleanly(proc, "not_json", f"{data}:3")


def test_data_emptied_by_validation_stops_before_training(tmp_path: Path) -> None:
    data = tmp_path / "no_answers.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": f"Q{i}", "output": " "}) + "\n" for i in range(5))
    )
    proc = run_cli(
        *TINY, "data=alpaca", f"data.path={data}", env={"TUNESMITH_OUTPUT": str(tmp_path)}
    )
    _fails_cleanly(proc, "5 of 5 records", "were rejected (empty_field: 5)", "rejects.jsonl")
    (run,) = (tmp_path / "runs").iterdir()
    rejects = [
        json.loads(line) for line in (run / "data" / "rejects.jsonl").read_text().splitlines()
    ]
    assert rejects[0]["source"] == f"{data}:1" and rejects[0]["field"] == "output"
    assert not (run / "checkpoints").exists()


# --------------------------------------------------------------------------- model folders


def _model_cli(tmp_path: Path, alpaca_file: Path, folder: Path):
    return run_cli(
        *TINY,
        "model=hf",
        f"model.path={folder}",
        "data=alpaca",
        f"data.path={alpaca_file}",
        "stages=[prepare,train]",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out")},
    )


def test_a_folder_that_is_not_a_model(tmp_path: Path, alpaca_file: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a model")
    proc = _model_cli(tmp_path, alpaca_file, folder)
    _fails_cleanly(proc, f"'{folder}' is not a Hugging Face model folder", "config.json")


def test_a_model_with_damaged_weights(tmp_path: Path) -> None:
    from framework.model.loading import load_pretrained
    from tests.conftest import compose_config

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "tokenizer.json").write_text("{}")
    # what an interrupted copy leaves: a header that announces more than the file holds
    (tmp_path / "model.safetensors").write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"a":')
    cfg = compose_config(["model=hf", f"model.path={tmp_path}"])
    with pytest.raises(ModelError, match="model.safetensors is damaged") as err:
        load_pretrained(tmp_path, cfg)
    assert "copy the model again" in err.value.format()


@pytest.mark.parametrize(
    "files,expected",
    [
        ({"config.json": "{model_type: llama"}, "is not valid JSON"),
        ({"config.json": "{}"}, "does not say what kind of model"),
        ({"config.json": '{"model_type": "llama"}'}, "no weights"),
        (
            {"config.json": '{"model_type": "llama"}', "model.safetensors": ""},
            "no tokenizer files",
        ),
    ],
)
def test_incomplete_model_folders(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ModelError, match=expected) as err:
        check_model_dir(tmp_path)
    assert "model.path=" in err.value.format()


# --------------------------------------------------------------------------- environment


def test_an_output_directory_that_cannot_be_written(tmp_path: Path) -> None:
    proc = run_cli(*TINY, "stages=[prepare]", env={"TUNESMITH_OUTPUT": "/sys/tunesmith-test"})
    _fails_cleanly(proc, "Cannot write", "/sys/tunesmith-test", "paths.output_dir")

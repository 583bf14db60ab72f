"""What the model learns from: exact loss positions for chat data, plain text for pre-training,
and the prepare stage run alone from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.data.chat import IGNORE_INDEX
from framework.data.encoding import encode_text, render_masked
from framework.manager import build_plugin_manager
from framework.pipeline import run_pipeline
from plugins.models.tiny import build_tokenizer
from tests.conftest import TINY, compose_config, run_cli


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(512)


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(entry_points=False)


def test_exactly_the_assistant_turns_and_their_end_of_turn_carry_loss(tokenizer, pm) -> None:
    record = {
        "conversations": [
            {"from": "system", "value": "Réponds brièvement."},
            {"from": "human", "value": "你好，世界！"},
            {"from": "gpt", "value": "Hello, world!"},
            {"from": "human", "value": "2 + 3 = ?"},
            {"from": "gpt", "value": "5"},
        ]
    }
    cfg = compose_config(["model=tiny", "data=sharegpt"])
    example = pm.hook.tunesmith_parse_record(name="sharegpt", record=record, data_cfg=cfg.data)
    enc = pm.hook.tunesmith_encode_example(
        name="sft", example=example, tokenizer=tokenizer, cfg=cfg
    )

    # the ChatML text, cut where the loss starts and stops
    segments = [
        (
            "<|im_start|>system\nRéponds brièvement.<|im_end|>\n<|im_start|>user\n你好，世界！"
            "<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("Hello, world!<|im_end|>\n", True),
        ("<|im_start|>user\n2 + 3 = ?<|im_end|>\n<|im_start|>assistant\n", False),
        ("5<|im_end|>\n", True),
    ]
    ids, labels = [], []
    for text, learned in segments:
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if learned else [IGNORE_INDEX] * len(seg)
    assert enc["input_ids"] == ids
    assert enc["labels"] == labels

    # train_on_prompt: every position
    cfg.data.train_on_prompt = True
    enc = pm.hook.tunesmith_encode_example(
        name="sft", example=example, tokenizer=tokenizer, cfg=cfg
    )
    assert enc["labels"] == ids


def test_pretrain_learns_every_token_and_the_closing_eos(tokenizer, pm) -> None:
    cfg = compose_config(["model=tiny", "data=text", "objective=pretrain", "data.max_length=64"])
    enc = pm.hook.tunesmith_encode_example(
        name="pretrain", example={"text": "Once upon a time."}, tokenizer=tokenizer, cfg=cfg
    )
    body = tokenizer("Once upon a time.", add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == [*body, tokenizer.eos_token_id]
    assert enc["labels"] == enc["input_ids"]
    # chat examples are not plain text: pretrain does not serve them
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert (
        pm.hook.tunesmith_encode_example(
            name="pretrain", example=chat, tokenizer=tokenizer, cfg=cfg
        )
        is None
    )


def test_pretrain_truncation_cuts_the_text_and_its_eos(tokenizer) -> None:
    enc = encode_text(tokenizer, "word " * 100, max_length=16)
    assert len(enc["input_ids"]) == 16 and tokenizer.eos_token_id not in enc["input_ids"]
    exact = tokenizer("one two", add_special_tokens=False)["input_ids"]
    fits = encode_text(tokenizer, "one two", max_length=len(exact) + 1)
    assert fits["input_ids"][-1] == tokenizer.eos_token_id


def test_render_masked_brackets_each_run_of_loss_free_tokens(tokenizer) -> None:
    a = tokenizer("Question: ", add_special_tokens=False)["input_ids"]
    b = tokenizer("answer", add_special_tokens=False)["input_ids"]
    ids = a + b + a
    labels = [IGNORE_INDEX] * len(a) + b + [IGNORE_INDEX] * len(a)
    assert render_masked(tokenizer, ids, labels) == "⟦Question: ⟧answer⟦Question: ⟧"


def test_continued_pretraining_runs_on_plain_text(make_cfg, tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    lines = [f"Paris is the capital of France. Line {i}, number {i * 7}." for i in range(30)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    cfg = make_cfg(
        *TINY,
        "data=text",
        f"data.path={path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "objective=pretrain",
        "data.max_length=64",
        "trainer.max_steps=2",
        "stages=[prepare,train]",
    )
    run_pipeline(cfg)
    run_dir = Path(cfg.paths.run_dir)
    spot = (run_dir / "data/spot_check.md").read_text("utf-8")
    assert "Paris is the capital" in spot and "⟦" not in spot.split("````text")[1]
    assert (run_dir / "artifact/adapter_config.json").exists()


def test_prepare_runs_alone_from_the_command_line_on_a_tricky_csv(tmp_path: Path) -> None:
    csv = tmp_path / "qa.csv"
    csv.write_text(
        "question,answer\n"
        + "".join(
            f'"Split ""a, b{i}"" on commas.","[""a"", ""b{i}""]\nDone."\n'
            f'把第{i}句话翻译成英文。,"Hello, world {i}."\n'
            for i in range(10)
        ),
        encoding="utf-8",
    )
    proc = run_cli(
        "model=tiny",
        "data=alpaca",
        f"data.path={csv}",
        "data.columns={instruction: question, output: answer}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "stages=[prepare]",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data report" in proc.stdout
    (run,) = (tmp_path / "out" / "runs").iterdir()
    report = json.loads((run / "data/report.json").read_text("utf-8"))
    assert report["loaded"] == 20 and report["rejected_total"] == 0
    rows = [json.loads(x) for x in (run / "data/train.jsonl").read_text("utf-8").splitlines()]
    answers = {r["messages"][-1]["content"] for r in rows}
    assert any(a.startswith('["a", "b') and a.endswith('"]\nDone.') for a in answers)
    assert any(r["messages"][0]["content"].startswith("把第") for r in rows)
    assert not (run / "checkpoints").exists()

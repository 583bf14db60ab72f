"""Diversity metrics by hand-computed numbers, and the warning when a fine-tune collapsed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import framework.evaluate.context as context
from framework.pipeline import run_pipeline
from plugins.metrics.diversity import (
    collapse_findings,
    distinct_n,
    repetition_rate,
    tokens,
    tunesmith_report_notes,
)
from tests.conftest import TINY, compose_config, write_sums

#: What a real fine-tune gave on couplets and "who wrote this poem" questions from the 300
#: Tang poems (issue 17): every couplet answered with repetitions, every author with 李白.
COLLAPSED_TANG = [
    ("床前明月光，", "疑是地上霜。", "江水江江江，江水江江江隐。"),
    ("春眠不觉晓，", "处处闻啼鸟。", "江水江江江，江水江江江隐。"),
    ("白日依山尽，", "黄河入海流。", "江水江江江，江水江江江隐。"),
    ("《春晓》的作者是谁？", "孟浩然", "李白"),
    ("《登鹳雀楼》的作者是谁？", "王之涣", "李白"),
    ("《静夜思》的作者是谁？", "李白", "李白"),
    ("《相思》的作者是谁？", "王维", "李白"),
]


def _rows(triples, base=None) -> list[dict]:
    return [
        {
            "id": str(k),
            "prompt": p,
            "reference": r,
            "tuned": t,
            **({"base": base[k]} if base else {}),
        }
        for k, (p, r, t) in enumerate(triples)
    ]


def test_tokens_are_words_and_chinese_characters() -> None:
    assert tokens("The cat, the CAT!") == ["the", "cat", "the", "cat"]
    assert tokens("江水江，隐。") == ["江", "水", "江", "隐"]
    assert tokens("LoRA 微调 v2") == ["lora", "微", "调", "v2"]


def test_distinct_and_repetition_by_hand() -> None:
    healthy = ["the cat sat", "a dog ran fast"]
    assert distinct_n(healthy, 1) == 1.0  # 7 words, all different
    assert distinct_n(healthy, 2) == 1.0  # 2 + 3 bigrams, all different
    assert repetition_rate(healthy) == 0.0
    collapsed = ["yes yes yes", "yes yes yes"]
    assert distinct_n(collapsed, 1) == pytest.approx(1 / 6)  # 1 distinct of 6 words
    assert distinct_n(collapsed, 2) == pytest.approx(1 / 4)  # (yes, yes) 4 times
    assert repetition_rate(collapsed) == pytest.approx(2 / 4)  # 1 repeat of 2, per answer
    # 江 水 江 江 江 江 水 江 江 江 隐: 10 bigrams, 4 distinct, so 6 repeat an earlier one
    assert repetition_rate(["江水江江江，江水江江江隐。"]) == pytest.approx(0.6)
    assert repetition_rate(["江水江江江，江水江江江隐。"], n=1) == pytest.approx(8 / 11)
    assert distinct_n([], 1) == 0.0 and repetition_rate([""]) == 0.0


def test_the_collapsed_tang_poem_answers_are_called_collapsed() -> None:
    found = collapse_findings([t for *_, t in COLLAPSED_TANG], [r for _, r, _ in COLLAPSED_TANG])
    # 李白 answers 4 of the 7; 18 of the 34 bigrams (3 x 10 + 4 x 1) repeat an earlier one
    assert found == [
        'one answer, "李白", is 57% of the 7 answers (the most common reference is 14% of them)',
        "53% of the 2-grams within an answer repeat an earlier one (references: 0%)",
    ]
    authors = [t for t in COLLAPSED_TANG if "作者" in t[0]]
    found = collapse_findings([t for *_, t in authors], [r for _, r, _ in authors])
    assert found == [
        'one answer, "李白", is 100% of the 4 answers (the most common reference is 25% of them)'
    ]


def test_healthy_answers_raise_no_warning() -> None:
    refs = [r for _, r, _ in COLLAPSED_TANG]
    assert collapse_findings(refs, refs) == []
    # a classifier answering its most common label a bit more often is not a collapse
    labels = ["positive", "negative", "positive", "negative", "positive", "positive"]
    truth = ["positive", "negative", "positive", "negative", "negative", "positive"]
    assert collapse_findings(labels, truth) == []
    assert collapse_findings(["a", "a"], ["b", "c"]) == []  # too few answers to say


def test_the_note_says_what_to_try() -> None:
    cfg = compose_config(["optim.lr=2e-3"])
    base = ["明月", "啼鸟", "黄河", "孟浩然", "王之涣", "李白", "王维"]
    notes = tunesmith_report_notes(results={}, rows=_rows(COLLAPSED_TANG, base), cfg=cfg)
    (note,) = notes
    assert note.level == "warning" and note.title == "the tuned answers collapsed"
    assert "optim.lr=0.0002" in note.text and "fewer epochs" in note.text
    assert "more (and more varied) training data" in note.text and "knows the language" in note.text
    assert "The base model's answers were not." in note.text
    refs = [(p, r, r) for p, r, _ in COLLAPSED_TANG]
    assert tunesmith_report_notes(results={}, rows=_rows(refs), cfg=cfg) is None
    assert tunesmith_report_notes(results={}, rows=[], cfg=cfg) is None


# --------------------------------------------------------------------------- in a real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("diversity")
    data = write_sums(root / "sums.jsonl")
    cfg = compose_config(
        [
            *TINY,
            "trainer.max_steps=2",
            "data=alpaca",
            f"data.path={data}",
            "stages=[prepare,train]",
        ],
        run_dir=root / "run",
    )
    run_pipeline(cfg)
    return root / "run", data


def _evaluate(trained, tmp_path: Path, monkeypatch, answer) -> tuple[dict, str]:
    """Evaluate a copy of the trained run with fabricated answers (``answer(prompt)``)."""

    def fake_generate(model, tokenizer, prompts, evaluator, keep, references=None):
        keep(list(range(len(prompts))), [answer(p) for p in prompts])

    monkeypatch.setattr(context, "generate", fake_generate)
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    cfg = compose_config(
        [
            *TINY,
            "data=alpaca",
            f"data.path={trained[1]}",
            "stages=[evaluate]",
            "evaluator.metrics=[exact_match,distinct_1,distinct_2,repetition_rate]",
        ],
        run_dir=run_dir,
    )
    metrics = run_pipeline(cfg)
    return metrics, (run_dir / "eval_report.md").read_text(encoding="utf-8")


def _sum(prompt: str) -> str:
    a, b = re.findall(r"(\d+) \+ (\d+)", prompt)[-1]
    return str(int(a) + int(b))


def test_a_collapsed_fine_tune_is_warned_in_the_report_and_the_console(
    trained, tmp_path: Path, monkeypatch, capsys
) -> None:
    metrics, report = _evaluate(trained, tmp_path, monkeypatch, lambda p: "7 7 7 7 7 7")
    out = capsys.readouterr().out
    assert metrics["tuned"]["distinct_1"] == pytest.approx(1 / 24)  # 4 answers of six 7s
    assert metrics["tuned"]["repetition_rate"] == pytest.approx(16 / 20)
    assert metrics["directions"]["repetition_rate"] == "lower"
    assert metrics["directions"]["distinct_2"] == "higher"
    for text in (out, report):
        assert "Warning: the tuned answers collapsed" in text
        assert "is 100% of the 4 answers" in text and "optim.lr=" in text
    assert report.index("Warning: the tuned answers collapsed") < report.index("## Examples")


def test_healthy_answers_give_no_warning_in_a_real_run(
    trained, tmp_path: Path, monkeypatch, capsys
) -> None:
    metrics, report = _evaluate(trained, tmp_path, monkeypatch, _sum)
    out = capsys.readouterr().out
    assert metrics["tuned"]["exact_match"] == 1.0
    assert "collapsed" not in out and "collapsed" not in report

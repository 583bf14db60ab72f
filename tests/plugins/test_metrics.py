"""Metric values against hand-computed or reference values, in English and Chinese."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from framework import Metric
from framework.descriptors import METRIC_NEEDS
from framework.errors import ConfigError
from framework.evaluate.context import EvalContext
from framework.evaluate.stage import score
from framework.evaluate.stats import TokenStats, stats_from_logits
from framework.evaluate.text import detect_language
from framework.manager import build_plugin_manager
from framework.run import Run
from plugins.metrics.choice_accuracy import pick
from plugins.metrics.scoring import (
    MixedTokenizer,
    answer_accuracy,
    bleu,
    bleu_tokenizer,
    exact_match,
    extract_answer,
    rouge,
    rouge_tokenizer,
)
from tests.conftest import compose_config

# --------------------------------------------------------------------------- exact match


def test_exact_match_normalisation_options() -> None:
    preds = ["Paris.", " paris ", "ＡＢＣ", "北京。"]
    refs = ["Paris", "Paris", "ABC", "北京"]
    # NFKC folds full-width letters always; nothing else by default
    assert exact_match(preds, refs) == pytest.approx(1 / 4)
    assert exact_match(preds, refs, lowercase=True) == pytest.approx(2 / 4)
    # Chinese full stop is punctuation too
    assert exact_match(preds, refs, lowercase=True, strip_punctuation=True) == 1.0
    assert exact_match(["a  b"], ["a b"]) == 1.0
    assert exact_match(["a  b"], ["a b"], collapse_whitespace=False) == 0.0


# --------------------------------------------------------------------------- BLEU


def test_bleu_english_hand_computed() -> None:
    # precisions 5/6, 3/5, 2/4, 1/3 and no brevity penalty: (1/12) ** (1/4)
    value = bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert value == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)


def test_bleu_chinese_uses_the_zh_tokenizer_automatically() -> None:
    refs, preds = ["我爱北京天安门"], ["我爱北京"]
    tokenize = bleu_tokenizer("auto", detect_language(refs))
    assert tokenize == "zh"
    # every n-gram of the 4 characters matches; brevity penalty exp(1 - 7/4)
    assert bleu(preds, refs, tokenize=tokenize) == pytest.approx(100 * math.exp(-0.75), abs=1e-6)
    # 13a sees one "word" per sentence and gives nothing: why the choice matters
    assert bleu(preds, refs, tokenize="13a") == 0.0
    assert bleu_tokenizer("auto", "en") == "13a"
    assert bleu_tokenizer("intl", "zh") == "intl"  # an explicit choice wins
    with pytest.raises(ConfigError, match="evaluator.bleu.tokenize"):
        bleu_tokenizer("jieba", "zh")


# --------------------------------------------------------------------------- ROUGE


def test_rouge_english_hand_computed() -> None:
    scores = rouge(["the cat is on the mat"], ["the cat sat on the mat"])
    # unigrams 5 of 6 both ways; bigrams 3 of 5; LCS "the cat on the mat" = 5 of 6
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)


def test_rouge_chinese_by_characters_and_by_jieba_words() -> None:
    refs, preds = ["我爱北京天安门"], ["我爱北京"]
    chars = rouge(preds, refs, tokenizer=rouge_tokenizer("auto", detect_language(refs)))
    # 4 of 7 characters recalled, all 4 precise: F = 8/11; bigrams 3 of 6: F = 2/3
    assert chars["rouge1"] == pytest.approx(8 / 11)
    assert chars["rouge2"] == pytest.approx(2 / 3)
    assert chars["rougeL"] == pytest.approx(8 / 11)
    words = rouge(preds, refs, tokenizer=rouge_tokenizer("jieba", "zh"))
    # jieba: 我/爱/北京/天安门 vs 我/爱/北京: F1 = 6/7; bigrams 2 of 3: F = 4/5
    assert words["rouge1"] == pytest.approx(6 / 7)
    assert words["rouge2"] == pytest.approx(4 / 5)
    # rouge-score's own tokenizer keeps only [a-z0-9]: Chinese would score nothing
    assert rouge(preds, refs)["rouge1"] == 0.0


def test_mixed_tokenizer_splits_chinese_and_keeps_latin_words() -> None:
    assert MixedTokenizer("char").tokenize("我叫李明，今年28岁 Hello") == [
        "我",
        "叫",
        "李",
        "明",
        "今",
        "年",
        "28",
        "岁",
        "hello",
    ]
    assert MixedTokenizer("jieba").tokenize("住在上海。Hello World") == [
        "住",
        "在",
        "上海",
        "hello",
        "world",
    ]


def test_language_detection_and_override() -> None:
    assert detect_language(["Paris", "London"]) == "en"
    assert detect_language(["Paris", "北京"]) == "zh"
    assert detect_language(["北京"], "en") == "en"
    with pytest.raises(ConfigError, match="evaluator.language"):
        detect_language(["x"], "fr")


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    "text,choices,pattern,expected",
    [
        ("The answer is (B).", ["A", "B", "C", "D"], None, "B"),
        ("Sentiment: Positive!", ["positive", "negative"], None, "positive"),
        ("答案是：正面", ["正面", "负面"], None, "正面"),
        ("A very positive review", ["positive", "very positive"], None, "very positive"),
        ("I'd say c. Answer: c", ["A", "B", "C", "D"], r"Answer:\s*([A-D])", "C"),
        ("Paris.\nIt is the capital.", None, None, "Paris"),
        ("no idea", ["yes", "no"], None, "no"),
        ("maybe", ["yes", "no"], None, ""),
    ],
)
def test_answer_extraction(text: str, choices, pattern, expected: str) -> None:
    assert extract_answer(text, choices, pattern) == expected


def test_answer_accuracy_compares_labels_not_text() -> None:
    preds = ["Positive, clearly.", "negative", "It is neutral", "积极"]
    refs = ["positive", "Positive", "neutral.", "积极"]
    labels = ["positive", "negative", "neutral", "积极", "消极"]
    assert answer_accuracy(preds, refs, labels) == pytest.approx(3 / 4)


def test_choice_pick_by_sum_or_mean_log_likelihood() -> None:
    scores = [(-3.0, 1), (-4.0, 4)]  # short choice likelier in total, long one per token
    assert pick(scores, "sum") == 0
    assert pick(scores, "mean") == 1


# --------------------------------------------------------------------------- token statistics


def test_token_stats_hand_computed() -> None:
    import torch

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    stats = stats_from_logits(logits, targets)
    nll = math.log(1 + 2 * math.exp(-2)) + math.log(math.e + 2)
    assert stats.nll == pytest.approx(nll, rel=1e-6)
    assert stats.tokens == 2 and stats.correct == 1
    assert stats.accuracy == 0.5
    assert stats.perplexity == pytest.approx(math.exp(nll / 2), rel=1e-6)
    assert math.isnan(TokenStats().perplexity)


# --------------------------------------------------------------------------- plugins


def _ctx(tmp_path: Path, refs: list[str], preds: list[str], *overrides: str) -> tuple:
    cfg = compose_config(["model=tiny", *overrides], run_dir=tmp_path / "run")
    run = Run(cfg=cfg, dir=tmp_path / "run", plugins=build_plugin_manager(entry_points=False))
    examples = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": r}]}
        for i, r in enumerate(refs)
    ]
    ctx = EvalContext(model=None, tokenizer=None, examples=examples, cfg=cfg)
    ctx._generations = list(preds)
    return run, ctx


def test_in_tree_metrics_declare_direction_needs_and_description() -> None:
    plugins = build_plugin_manager(entry_points=False)
    names = plugins.names("metric")
    assert {"perplexity", "exact_match", "bleu", "rouge", "rougeL"} <= set(names)
    for name in names:
        info = plugins.describe("metric", name)
        assert isinstance(info, Metric) and info.description, name
        assert info.needs and set(info.needs) <= set(METRIC_NEEDS), name
        if name == "lm_eval":  # each task's direction comes with its Score, from lm-eval
            assert info.higher_is_better is None
            continue
        lower = {"perplexity", "repetition_rate"}  # where a smaller value is the better one
        assert info.higher_is_better is (name not in lower), name


def test_metric_plugins_follow_the_config(tmp_path: Path) -> None:
    run, ctx = _ctx(
        tmp_path,
        ["我爱北京天安门", "the cat sat on the mat"],
        ["我爱北京", "the cat sat on the mat"],
        "evaluator.metrics=[bleu,rouge,exact_match]",
        "evaluator.rouge.tokenize=jieba",
    )
    scored = score(run, ctx)
    got = scored.values
    assert list(got) == ["bleu", "rouge1", "rouge2", "rougeL", "exact_match"]
    # each key takes the direction its metric's plugin declares (rouge covers rouge1...)
    assert set(scored.directions.values()) == {"higher"} and list(scored.directions) == list(got)
    assert got["exact_match"] == 0.5
    assert got["rouge1"] == pytest.approx((6 / 7 + 1) / 2)
    # one Chinese reference is enough for the zh tokenizer: the corpus is scored as one
    expected = bleu(["我爱北京", "the cat sat on the mat"], ctx.references(), tokenize="zh")
    assert got["bleu"] == pytest.approx(expected)


def test_single_rouge_variant_and_accuracy_with_choices(tmp_path: Path) -> None:
    run, ctx = _ctx(
        tmp_path,
        ["positive", "negative", "negative"],
        ["Positive!", "I think positive", "negative."],
        "evaluator=classification",
        "evaluator.metrics=[accuracy,rougeL]",
        "evaluator.choices=[positive,negative]",
    )
    got = score(run, ctx).values
    assert set(got) == {"accuracy", "rougeL"}
    assert got["accuracy"] == pytest.approx(2 / 3)


def test_unknown_metric_is_rejected_with_the_served_names(tmp_path: Path) -> None:
    from framework.evaluate.stage import check_metrics

    run, _ = _ctx(tmp_path, ["a"], ["a"], "evaluator.metrics=[bleu,rogue]")
    with pytest.raises(ConfigError) as err:
        check_metrics(run)
    assert "Did you mean 'rouge'?" in str(err.value)
    assert "token_accuracy" in str(err.value) and "choice_accuracy" in str(err.value)


def test_choices_come_from_references_unless_too_many(tmp_path: Path) -> None:
    _, ctx = _ctx(tmp_path, ["b", "a", "b"], ["", "", ""])
    assert ctx.choices() == [["a", "b"]] * 3
    _, ctx = _ctx(tmp_path, [f"answer {i}" for i in range(30)], [""] * 30)
    with pytest.raises(ConfigError, match="evaluator.choices"):
        ctx.choices()

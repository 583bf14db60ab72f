"""The ``lm_eval`` metric: lm-evaluation-harness tasks on the base and the tuned model.

On the tiny model with the shipped general-knowledge task (a few items per language):
tunesmith's numbers equal those of lm-eval's own ``simple_evaluate`` on the same models,
both sides land in metrics.json and the report, and bad task names or folders stop a run
before it trains.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from framework import Score
from framework.errors import ConfigError, TunesmithError
from framework.pipeline import run_pipeline
from framework.resolvers import ROOT_DIR
from plugins.metrics import lm_eval_runner as runner
from tests.conftest import TINY, compose_config, write_sums

TASKS = ROOT_DIR / "data" / "lm_eval_tasks"
LIMIT = 6
KEYS = [
    f"lm_eval/{t}/acc"
    for t in ("general_knowledge", "general_knowledge_en", "general_knowledge_zh")
]


def _overrides(data: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        "data=alpaca",
        f"data.path={data}",
        "evaluator=forgetting",
        "evaluator.metrics=[perplexity,lm_eval]",
        f"evaluator.lm_eval.limit={LIMIT}",
        *extra,
    ]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A tiny LoRA run (prepare, train, evaluate with evaluator=forgetting): dir, data, metrics."""
    root = tmp_path_factory.mktemp("lm_eval")
    data = write_sums(root / "sums.jsonl")
    cfg = compose_config(_overrides(data, "stages=[prepare,train,evaluate]"), run_dir=root / "run")
    return root / "run", data, run_pipeline(cfg)


def _own_run(model, tokenizer) -> dict:
    """lm-eval's own simple_evaluate, outside tunesmith, with the preset's settings."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=32),
        tasks=["general_knowledge"],
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
        limit=LIMIT,
        bootstrap_iters=1000,
    )["results"]


def test_numbers_equal_lm_eval_own_run(evaluated) -> None:
    from peft import PeftModel

    from framework.manager import build_plugin_manager

    run_dir, data, metrics = evaluated
    cfg = compose_config(_overrides(data), run_dir=run_dir)
    base, tokenizer = build_plugin_manager().hook.tunesmith_build_model(name="tiny", cfg=cfg)
    own = {"base": _own_run(base, tokenizer)}
    tuned = PeftModel.from_pretrained(base, run_dir / "artifact")
    own["tuned"] = _own_run(tuned, tokenizer)

    saved = json.loads((run_dir / "metrics.json").read_text())
    for side in ("base", "tuned"):
        scores = runner.scores(runner.read_side(run_dir, side), runner.options(cfg))
        for key in KEYS:
            task = key.split("/")[1]
            assert metrics[side][key] == pytest.approx(own[side][task]["acc,none"], abs=1e-9)
            assert saved[side][key] == metrics[side][key]
            assert scores[key].higher_is_better is True
            assert scores[key].stderr == pytest.approx(
                float(own[side][task]["acc_stderr,none"]), abs=1e-9
            )
            # metrics.json records lm-eval's direction and standard error with the value
            assert saved["directions"][key] == "higher"
            assert saved["stderr"][side][key] == pytest.approx(
                float(own[side][task]["acc_stderr,none"]), abs=1e-9
            )
        assert metrics[side]["perplexity"] > 0  # the default metrics are still scored


def test_scores_carry_lm_eval_direction_and_stderr() -> None:
    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.05,
                "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": "N/A",
            },
            "wikitext": {"word_perplexity,none": 30.0, "word_perplexity_stderr,none": "N/A"},
        },
        "higher_is_better": {
            "gsm8k": {"exact_match": True},
            "wikitext": {"word_perplexity": False},
        },
    }
    opts = runner.Options(tasks=("gsm8k", "wikitext"))
    assert runner.scores(results, opts) == {
        "lm_eval/gsm8k/exact_match/strict-match": Score(0.25, True, 0.05),
        "lm_eval/gsm8k/exact_match/flexible-extract": Score(0.5, True, None),
        "lm_eval/wikitext/word_perplexity": Score(30.0, False, None),
    }


def test_report_has_the_forgetting_table_and_sample_logs(evaluated) -> None:
    run_dir, _, metrics = evaluated
    report = (run_dir / "eval_report.md").read_text(encoding="utf-8")
    assert "## Benchmarks (lm-eval)" in report
    assert "| general_knowledge/acc |" in report and "| general_knowledge_zh/acc |" in report
    # one plain-language line on general_knowledge (the task asked for)
    assert any(
        phrase in report
        for phrase in (
            "cost general ability on general_knowledge",
            "No measurable loss of general ability on general_knowledge",
            "The fine-tune improved general_knowledge",
        )
    )
    for side in ("base", "tuned"):
        for lang in ("en", "zh"):
            path = run_dir / "lm_eval" / side / f"samples_general_knowledge_{lang}.jsonl"
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            assert len(rows) == LIMIT
            assert {"doc", "target", "resps", "acc"} <= set(rows[0])
        assert (run_dir / "lm_eval" / side / "results.json").is_file()


def test_verdict_says_when_the_drop_is_larger_than_the_noise() -> None:
    base = Score(0.80, True, 0.02)
    lost = runner.verdict("general_knowledge", "acc", base, Score(0.70, True, 0.02), 2.0, True)
    assert lost.startswith("**The fine-tune cost general ability on general_knowledge**")
    assert "fell by 10.0 points (80.0 → 70.0)" in lost
    same = runner.verdict("general_knowledge", "acc", base, Score(0.78, True, 0.02), 2.0, True)
    assert same.startswith("No measurable loss of general ability")
    lower = Score(10.0, False, 0.5)  # a perplexity going up is a loss
    assert "cost general ability" in runner.verdict(
        "wikitext", "ppl", lower, Score(13.0, False, 0.5), 2.0, False
    )
    assert runner.verdict("t", "m", Score(0.5, None, 0.1), Score(0.1, None, 0.1), 2, True) is None


def test_eval_only_on_a_finished_run(evaluated, tmp_path: Path) -> None:
    run_dir, data, metrics = evaluated
    cfg = compose_config(
        _overrides(data, "stages=[evaluate]", f"evaluator.run={run_dir}"), run_dir=tmp_path / "ev"
    )
    again = run_pipeline(cfg)
    for side in ("base", "tuned"):
        for key in KEYS:
            assert again[side][key] == pytest.approx(metrics[side][key], abs=1e-9)
    assert (tmp_path / "ev" / "lm_eval" / "tuned" / "results.json").is_file()


def test_misspelled_task_is_caught_before_training(tmp_path: Path) -> None:
    data = write_sums(tmp_path / "sums.jsonl")
    cfg = compose_config(
        _overrides(data, "evaluator.lm_eval.tasks=[general_knowlege,hellaswg]"),
        run_dir=tmp_path / "run",
    )
    with pytest.raises(ConfigError) as err:
        run_pipeline(cfg)
    text = str(err.value)
    assert "'general_knowlege': nearest lm-eval names: general_knowledge" in text
    assert "'hellaswg': nearest lm-eval names: hellaswag" in text
    assert "evaluator.lm_eval.tasks" in text
    assert not (tmp_path / "run" / "data").exists()  # nothing ran, not even prepare


def test_missing_include_path_is_a_clear_error(tmp_path: Path) -> None:
    data = write_sums(tmp_path / "sums.jsonl")
    cfg = compose_config(
        _overrides(data, f"evaluator.lm_eval.include_path={tmp_path / 'no_tasks'}"),
        run_dir=tmp_path / "run",
    )
    with pytest.raises(ConfigError, match="does not exist") as err:
        run_pipeline(cfg)
    assert "evaluator.lm_eval.include_path" in str(err.value)
    assert not (tmp_path / "run" / "data").exists()


def test_no_task_named_is_a_clear_error(tmp_path: Path) -> None:
    data = write_sums(tmp_path / "sums.jsonl")
    cfg = compose_config(_overrides(data, "evaluator.lm_eval.tasks=[]"), run_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="no lm-eval task is named"):
        run_pipeline(cfg)


def test_missing_lm_eval_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(TunesmithError, match=r'pip install -e "\.\[eval\]"'):
        runner.require_lm_eval()


def test_shipped_task_is_what_the_script_writes(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_gk", ROOT_DIR / "scripts" / "make_general_knowledge_task.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path)])
    shipped = TASKS / "general_knowledge"
    for path in sorted(tmp_path.iterdir()):
        assert path.read_bytes() == (shipped / path.name).read_bytes(), path.name
    rows = [json.loads(x) for x in (shipped / "zh.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 150 and all(len(r["choices"]) == 4 for r in rows)
    assert {r["category"] for r in rows} >= {"arithmetic", "capitals", "units", "science"}


def test_a_sweep_ranks_jobs_by_a_benchmark_metric() -> None:
    from framework.sweep.records import JobRecord, choose_metric
    from framework.sweep.report import rank

    key = "tuned/lm_eval/general_knowledge/acc"
    # what a job records: its metrics and, per key, the direction lm-eval declared
    jobs = [
        JobRecord(
            n,
            f"job{n}",
            [f"method.r={r}"],
            "finished",
            {"tuned": {KEYS[0]: acc}, "directions": {KEYS[0]: "higher"}},
        )
        for n, (r, acc) in enumerate([(4, 0.40), (8, 0.55), (16, 0.50)])
    ]
    ranking = choose_metric(None, jobs, metric=key)
    assert (ranking.metric, ranking.direction, ranking.source) == (key, "maximize", "declared")
    assert [row.job.num for row in rank(jobs, ranking.metric, ranking.direction)] == [1, 2, 0]

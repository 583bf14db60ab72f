"""The evaluate stage on the tiny model: base vs tuned, reports, stopping and continuing,
and evaluating what was not trained in the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import framework.evaluate.predictions as predictions
import framework.evaluate.stats as stats_mod
import framework.model.generation as generation
from framework.pipeline import run_pipeline
from framework.run import read_jsonl
from tests.conftest import TINY, compose_config, write_sums


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny LoRA run that went through prepare and train (not evaluate): (run dir, data)."""
    root = tmp_path_factory.mktemp("trained")
    data = write_sums(root / "mini.jsonl")
    cfg = compose_config(
        [*TINY, "data=alpaca", f"data.path={data}", "stages=[prepare,train]"], run_dir=root / "run"
    )
    run_pipeline(cfg)
    return root / "run", data


def _copy(trained_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained_dir, target)
    return target


def _cfg(run_dir: Path, data: Path, *overrides: str):
    return compose_config(
        [*TINY, "data=alpaca", f"data.path={data}", "stages=[evaluate]", *overrides],
        run_dir=run_dir,
    )


def test_base_and_tuned_are_scored_on_the_same_examples(trained, tmp_path: Path) -> None:
    run_dir = _copy(trained[0], tmp_path)
    metrics = run_pipeline(_cfg(run_dir, trained[1]))
    assert set(metrics) >= {"base", "tuned"}
    names = ["perplexity", "token_accuracy", "exact_match", "bleu", "rouge1", "rouge2", "rougeL"]
    assert list(metrics["tuned"]) == names and list(metrics["base"]) == names
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    assert json.loads((run_dir / "metrics.json").read_text()) == {
        "base": metrics["base"],
        "tuned": metrics["tuned"],
        "directions": {n: "lower" if n == "perplexity" else "higher" for n in names},
    }
    test = read_jsonl(run_dir / "data/test.jsonl")
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert len(rows) == len(test)
    assert {r["id"] for r in rows} == {predictions.example_id(e) for e in test}
    assert all({"prompt", "reference", "messages", "base", "tuned"} <= set(r) for r in rows)

    report = (run_dir / "eval_report.md").read_text()
    assert "| metric | base | tuned | change |" in report
    assert "| perplexity |" in report and "(better)" in report
    assert "## Examples that improved" in report and "## Examples that got worse" in report
    assert "base model: the tuned model with its adapter disabled" in report


def test_validation_metrics_are_logged_while_training(trained) -> None:
    import csv

    with (trained[0] / "logs/metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    ppl = [float(r["val/perplexity"]) for r in rows if r.get("val/perplexity")]
    acc = [float(r["val/token_accuracy"]) for r in rows if r.get("val/token_accuracy")]
    loss = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert ppl and acc and len(ppl) == len(loss)
    # perplexity is exp of the token-weighted validation loss
    assert ppl[-1] == pytest.approx(2.718281828 ** loss[-1], rel=1e-3)
    assert all(0.0 <= a <= 1.0 for a in acc)


def test_disabled_adapter_base_equals_a_freshly_built_base(trained, tmp_path: Path) -> None:
    # classification metrics by log-likelihood too: the answers 2..13 are the choices
    opts = [
        "evaluator=classification",
        "evaluator.metrics=[choice_accuracy,perplexity,token_accuracy]",
    ]
    a = run_pipeline(_cfg(_copy(trained[0], tmp_path / "a"), trained[1], *opts))
    b = run_pipeline(
        _cfg(_copy(trained[0], tmp_path / "b"), trained[1], *opts, "evaluator.base=rebuild")
    )
    assert list(a["base"]) == ["choice_accuracy", "perplexity", "token_accuracy"]
    for name in a["base"]:
        assert a["base"][name] == pytest.approx(b["base"][name], rel=1e-5)
        assert a["tuned"][name] == pytest.approx(b["tuned"][name], rel=1e-5)
    assert 0.0 <= a["tuned"]["choice_accuracy"] <= 1.0
    assert not (tmp_path / "a/run/predictions.jsonl").exists()  # nothing was generated


def test_perplexity_and_token_accuracy_match_the_model_itself(trained) -> None:
    import torch

    from framework.data.chat import encode_chat
    from framework.manager import build_plugin_manager
    from framework.run import Run

    run_dir, data = trained
    cfg = _cfg(run_dir, data)
    run = Run(cfg=cfg, dir=run_dir, plugins=build_plugin_manager(entry_points=False))
    model, tok = run.build_base()
    examples = read_jsonl(run_dir / "data/test.jsonl")
    stats = stats_mod.token_stats(model, tok, examples, cfg)
    nll = correct = count = 0.0
    with torch.no_grad():
        for ex in examples:  # one at a time, no padding: the library's own loss
            enc = encode_chat(tok, ex["messages"], 256)
            ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
            out = model(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            nll += float(out.loss) * n
            count += n
            mask = labels[0, 1:] != -100
            correct += int((out.logits[0, :-1].argmax(-1)[mask] == labels[0, 1:][mask]).sum())
    assert stats.tokens == count
    assert stats.nll == pytest.approx(nll, rel=1e-4)
    assert stats.accuracy == pytest.approx(correct / count)

    # the log-likelihood choice scorer agrees with the model's loss on each choice
    ex = examples[0]
    scores = stats_mod.choice_logliks(model, tok, [ex], [["7", "12"]], cfg)[0]
    for choice, (loglik, n) in zip(["7", "12"], scores, strict=True):
        messages = [*ex["messages"][:-1], {"role": "assistant", "content": choice}]
        enc = encode_chat(tok, messages, 256)
        out = model(
            input_ids=torch.tensor([enc["input_ids"]]), labels=torch.tensor([enc["labels"]])
        )
        assert n == sum(1 for t in enc["labels"][1:] if t != -100)
        assert loglik == pytest.approx(-float(out.loss) * n, rel=1e-4)


def test_a_stopped_evaluation_keeps_its_answers_and_a_rerun_continues(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _copy(trained[0], tmp_path)
    cfg = _cfg(
        run_dir, trained[1], "evaluator.generation_batch_size=2", "evaluator.metrics=[exact_match]"
    )
    n_test = len(read_jsonl(run_dir / "data/test.jsonl"))
    assert n_test >= 4
    real = generation.generate_batch
    calls: list[list[str]] = []

    def stop_after_first(model, tokenizer, prompts, *settings, **options):
        if calls:
            raise KeyboardInterrupt("stopped by the user")
        calls.append(prompts)
        return real(model, tokenizer, prompts, *settings, **options)

    monkeypatch.setattr(generation, "generate_batch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    kept = read_jsonl(run_dir / "predictions.jsonl")
    assert len(kept) == 2 and all("base" in r and "tuned" not in r for r in kept)

    generated: list[str] = []

    def counting(model, tokenizer, prompts, *settings, **options):
        generated.extend(prompts)
        return real(model, tokenizer, prompts, *settings, **options)

    monkeypatch.setattr(generation, "generate_batch", counting)
    metrics = run_pipeline(cfg)
    assert set(metrics) >= {"base", "tuned"}
    # base: only the examples the stopped run had not done; tuned: all of them
    assert len(generated) == (n_test - 2) + n_test
    assert not {r["prompt"] for r in kept} & set(generated[: n_test - 2])
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert len(rows) == n_test and all("base" in r and "tuned" in r for r in rows)
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[r["id"]]["base"] == r["base"] for r in kept)

    # other generation settings: nothing is reused
    generated.clear()
    run_pipeline(
        _cfg(
            run_dir,
            trained[1],
            "evaluator.metrics=[exact_match]",
            "force=true",
            "evaluator.max_new_tokens=4",
            "evaluator.max_samples=2",
        )
    )
    assert len(generated) == 2 * 2


def test_evaluate_a_finished_run_from_another_directory(trained, tmp_path: Path) -> None:
    # the command line names another model: the run's own model and method are used
    cfg = compose_config(
        ["stages=[evaluate]", f"evaluator.run={trained[0]}", "evaluator=loss"],
        run_dir=tmp_path / "eval",
    )
    assert cfg.model.name == "smollm2"
    metrics = run_pipeline(cfg)
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    report = (tmp_path / "eval" / "eval_report.md").read_text()
    assert f"artifact {trained[0] / 'artifact'}" in report and "`tiny`" in report
    assert "name: tiny" in (tmp_path / "eval" / "config.yaml").read_text()


def test_evaluate_an_adapter_folder_or_any_local_model(trained, tmp_path: Path) -> None:
    run_dir, data = trained
    adapter = run_pipeline(
        _cfg(
            tmp_path / "a",
            data,
            "stages=[prepare,evaluate]",
            "evaluator=loss",
            f"evaluator.adapter={run_dir / 'artifact'}",
        )
    )
    own = run_pipeline(_cfg(_copy(run_dir, tmp_path / "own"), data, "evaluator=loss"))
    assert adapter["tuned"]["perplexity"] == pytest.approx(own["tuned"]["perplexity"], rel=1e-5)

    # no tuned model at all: the configured model alone, as "base"
    alone = run_pipeline(_cfg(tmp_path / "b", data, "stages=[prepare,evaluate]", "evaluator=loss"))
    assert set(alone) == {"base", "directions"}
    assert alone["base"]["perplexity"] == pytest.approx(own["base"]["perplexity"], rel=1e-5)

    # a local model folder as the tuned side: here the base model's own files, so no change
    from framework.manager import build_plugin_manager
    from framework.run import Run

    cfg = _cfg(tmp_path / "c", data, "evaluator=loss")
    model, _ = Run(cfg=cfg, dir=tmp_path / "c", plugins=build_plugin_manager()).build_base()
    folder = model.name_or_path
    same = run_pipeline(
        _cfg(
            tmp_path / "c",
            data,
            "stages=[prepare,evaluate]",
            "evaluator=loss",
            f"evaluator.model_path={folder}",
        )
    )
    assert same["tuned"]["perplexity"] == pytest.approx(same["base"]["perplexity"], rel=1e-6)


def test_bad_evaluation_sources_are_clear_errors(trained, tmp_path: Path) -> None:
    from framework.errors import ConfigError, ModelError

    run_dir, data = trained
    with pytest.raises(ModelError, match="adapter_config.json"):
        run_pipeline(_cfg(tmp_path / "a", data, f"evaluator.adapter={data.parent}"))
    with pytest.raises(ConfigError, match="not a finished tunesmith run"):
        run_pipeline(_cfg(tmp_path / "b", data, f"evaluator.run={data.parent}"))
    with pytest.raises(ConfigError, match="not 2"):
        run_pipeline(
            _cfg(
                tmp_path / "c",
                data,
                f"evaluator.run={run_dir}",
                f"evaluator.adapter={run_dir / 'artifact'}",
            )
        )


def test_generation_stops_at_end_of_turn_and_at_stop_strings(trained) -> None:
    from framework.manager import build_plugin_manager
    from framework.run import Run

    cfg = _cfg(trained[0], trained[1], "evaluator.stop=[END]")
    model, tok = Run(cfg=cfg, dir=trained[0], plugins=build_plugin_manager()).build_base()
    eot = generation.end_of_turn_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in eot and tok.eos_token_id in eot
    params = generation.GenerationParams.from_evaluator(cfg.evaluator)
    assert params.stop == ["END"] and not params.sampling
    kwargs = params.generate_kwargs(tok, eot)
    assert kwargs["do_sample"] is False and kwargs["eos_token_id"] == eot
    assert generation.cut_at_stop("42 END more", ["END"]) == "42 "

"""Training controls from config: logging, schedules, checkpointing, early stopping, loggers."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

from tests.conftest import TINY
from tests.helpers import encoded, fit, mean_loss


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "logs/metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in _rows(run_dir) if r.get(key)]


def test_each_interval_logs_loss_lr_throughput_and_memory(make_cfg, alpaca_file: Path) -> None:
    cfg = make_cfg(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=2",
    )
    run = fit(cfg)
    for key in ("train/loss", "train/lr", "train/tokens_per_s", "train/peak_mem_mb"):
        series = _series(run.dir, key)
        assert [s for s, _ in series] == [1, 3], key  # every 2nd optimizer step
        assert all(v > 0 for _, v in series), key
    assert len(_series(run.dir, "val/loss")) == 2  # validated every 2 steps
    summary = json.loads((run.dir / "train_summary.json").read_text())
    assert summary["trainable"] < summary["total"] and summary["peak_rss_mb"] > 0
    assert (run.dir / "loss_curve.png").stat().st_size > 0


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_learning_rate_follows_the_schedule_with_warmup(
    schedule: str, make_cfg, alpaca_file: Path
) -> None:
    import torch
    from transformers import get_scheduler

    steps, warmup, lr = 6, 2, 1e-2
    cfg = make_cfg(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        f"trainer.max_steps={steps}",
        f"optim.scheduler={schedule}",
        f"optim.warmup_steps={warmup}",
        f"optim.lr={lr}",
    )
    run = fit(cfg)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    name = "constant_with_warmup" if schedule == "constant" else schedule
    ref = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=steps)
    expected = []
    for _ in range(steps):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    logged = [v for _, v in _series(run.dir, "train/lr")]
    assert logged == pytest.approx(expected, rel=1e-6)
    assert logged[0] == 0 and max(logged) == pytest.approx(lr)  # warm-up from 0 to the peak


def test_gradient_checkpointing_gives_the_same_training(make_cfg, alpaca_file: Path) -> None:
    common = (*TINY, "data=alpaca", f"data.path={alpaca_file}", "trainer.max_steps=3")
    plain = fit(make_cfg(*common))
    losses = [v for _, v in _series(plain.dir, "train/loss")]

    import shutil

    shutil.rmtree(plain.dir)
    ckpt = fit(make_cfg(*common, "method.gradient_checkpointing=true"))
    assert ckpt.model.get_base_model().is_gradient_checkpointing
    assert [v for _, v in _series(ckpt.dir, "train/loss")] == pytest.approx(losses, rel=1e-5)
    assert json.loads((ckpt.dir / "train_summary.json").read_text())["gradient_checkpointing"]


def test_gradient_accumulation_and_seeded_data_order(tmp_path: Path, alpaca_file: Path) -> None:
    from tests.conftest import compose_config

    def run_with(seed: int, name: str):
        cfg = compose_config(
            (
                *TINY,
                "data=alpaca",
                f"data.path={alpaca_file}",
                "trainer.max_steps=-1",
                "trainer.max_epochs=1",
                "trainer.accumulate_grad_batches=2",
                f"seed={seed}",
            ),
            run_dir=tmp_path / name,
        )
        return fit(cfg)

    a, b, c = run_with(1, "a"), run_with(1, "b"), run_with(2, "c")
    batches = math.ceil(len(encoded(a)) / int(a.cfg.data.batch_size))
    summary = json.loads((a.dir / "train_summary.json").read_text())
    assert summary["global_step"] == math.ceil(batches / 2)  # one optimizer step per 2 batches
    loss = {r.dir.name: [v for _, v in _series(r.dir, "train/loss")] for r in (a, b, c)}
    assert loss["a"] == loss["b"]  # same seed: same data order, same numbers
    assert loss["a"] != loss["c"]  # another seed: another order


def test_best_k_checkpoints_keep_the_lowest_validation_losses(make_cfg, alpaca_file: Path) -> None:
    cfg = make_cfg(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "callbacks=best_k",
        "callbacks.model_checkpoint.save_top_k=2",
        "trainer.max_steps=8",
        "trainer.val_check_interval=2",
        "trainer.check_val_every_n_epoch=null",
        "optim.lr=1e-2",
    )
    run = fit(cfg)
    val = dict(_series(run.dir, "val/loss"))  # {step index: loss} at each validation
    assert len(val) == 4
    kept = sorted(p.name for p in (run.dir / "checkpoints").glob("step*.ckpt"))
    best_two = sorted(val, key=val.get)[:2]
    assert kept == sorted(f"step{s + 1}-val_loss{val[s]:.4f}.ckpt" for s in best_two)
    assert (run.dir / "checkpoints/last.ckpt").is_file()


def test_early_stopping_ends_training_when_val_loss_stops_improving(
    make_cfg, alpaca_file: Path
) -> None:
    cfg = make_cfg(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=2",
        "trainer.max_steps=40",
        "trainer.val_check_interval=2",
        "trainer.check_val_every_n_epoch=null",
        "optim.lr=0",  # nothing improves, so it must stop after 1 + patience validations
    )
    run = fit(cfg)
    summary = json.loads((run.dir / "train_summary.json").read_text())
    assert summary["global_step"] == 6
    assert len(_series(run.dir, "val/loss")) == 3


@pytest.mark.parametrize(
    "logger,package,written",
    [
        ("tensorboard", "tensorboard", "tensorboard/events.out.tfevents.*"),
        ("mlflow", "mlflow", "../mlruns/*/*/metrics/train/loss"),  # one store per output root
        ("wandb", "wandb", "wandb/offline-run-*/run-*.wandb"),
    ],
)
def test_logger_writes_into_the_run_directory(
    logger: str, package: str, written: str, make_cfg, alpaca_file: Path
) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"logger={logger} needs `pip install {package}` (see docs/methods.md)")
    cfg = make_cfg(
        *TINY, "data=alpaca", f"data.path={alpaca_file}", f"logger={logger}", "trainer.max_steps=2"
    )
    run = fit(cfg)
    where = run.dir.parent if written.startswith("../") else run.dir
    assert list(where.glob(written.removeprefix("../"))), f"{logger} wrote nothing: {written}"
    assert _series(run.dir, "train/loss")  # the CSV logger stays on for the loss curve


def test_pretrain_objective_learns_every_token_of_plain_text(make_cfg, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": f"{a} plus {b} is {a + b}."}) + "\n"
            for a in range(1, 9)
            for b in range(1, 6)
        ),
        encoding="utf-8",
    )
    cfg = make_cfg(
        *TINY,
        "data=text",
        f"data.path={corpus}",
        "objective=pretrain",
        "optim.lr=1e-2",
        "trainer.max_steps=6",
    )
    run = fit(cfg)
    rows = encoded(run)
    assert all(list(r["labels"]) == list(r["input_ids"]) for r in rows)  # every token counts
    assert rows[0]["input_ids"][-1] == run.tokenizer.eos_token_id
    text = run.hook.tunesmith_encode_example(
        name="pretrain", example={"text": "Paris is big."}, tokenizer=run.tokenizer, cfg=cfg
    )
    assert run.tokenizer.decode(text["input_ids"], skip_special_tokens=True) == "Paris is big."
    assert mean_loss(run.model, run) < mean_loss(run.build_base()[0], run)


def test_callback_and_logger_presets_combine(tmp_path: Path) -> None:
    from tests.conftest import compose_config

    cfg = compose_config(
        ["callbacks=[early_stopping,best_k]", "logger=[tensorboard,mlflow,wandb]"],
        run_dir=tmp_path / "run",
    )
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
    assert cfg.callbacks.early_stopping.monitor == "val/loss"
    assert set(cfg.logger) == {"csv", "tensorboard", "mlflow", "wandb"}
    assert cfg.logger.wandb.offline is True
    assert cfg.logger.mlflow.tracking_uri == f"file:{tmp_path}/mlruns"  # the output root


def test_a_logger_that_cannot_be_built_is_a_config_error(make_cfg) -> None:
    from framework.errors import ConfigError
    from framework.train.stage import build_trainer
    from tests.helpers import new_run

    cfg = make_cfg(*TINY, "+logger.broken._target_=no_such_package.Logger")
    with pytest.raises(ConfigError) as err:
        build_trainer(new_run(cfg))
    assert "logger.broken" in str(err.value) and "logger.broken=null" in str(err.value)


def test_a_busy_cpu_is_named_with_what_to_do() -> None:
    from framework.train.stage import cpu_busy_message

    # two cores, another busy process beside this one, torch on both cores: warned
    message = cpu_busy_message(load=2.6, cores=2, threads=2)
    assert message is not None
    assert "load average 2.6 on 2 cores" in message and "OMP_NUM_THREADS=1" in message
    assert cpu_busy_message(load=1.2, cores=2, threads=2) is None  # only this process
    assert cpu_busy_message(load=3.0, cores=2, threads=1) is None  # one thread: no waiting
    assert cpu_busy_message(load=4.0, cores=16, threads=16) is None  # plenty of cores left

"""Training benchmark: tunesmith against a hand-written PyTorch + PEFT loop, run alternately.

Every run is a fresh process (so peak RSS and start-up are honest), and the runs alternate
(plain, tunesmith-same, tunesmith-defaults, plain, ...) so that the ratios compare runs made
under the same load on a shared machine. Figures are medians over the rounds.

* ``plain``: ``benchmarks/plain_loop.py``, padding to the longest in each batch.
* ``same``: tunesmith with the same padding and math (``data.packing=false
  data.group_by_length=false``): the framework's overhead.
* ``defaults``: tunesmith with its own defaults for efficiency (packing on).

Run: ``python benchmarks/bench_train.py --rounds 5`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.workload import Workload, build  # noqa: E402

STEPS = 60


#: Overrides of every tunesmith run: the workload of issue 8.
def common_overrides(work: Workload, steps: int) -> list[str]:
    return [
        "stages=[prepare,train]",
        "data=alpaca",
        f"data.path={work.records}",
        "data.split.train=1.0",
        "data.split.val=0.0",
        "data.split.test=0.0",
        f"data.max_length={work.spec.max_length}",
        "data.batch_size=8",
        "model=hf",
        f"model.path={work.model}",
        "model.dtype=float32",
        "method=lora",
        "method.r=8",
        "method.lora_alpha=16",
        "method.lora_dropout=0.0",
        "method.target_modules=[q_proj,v_proj]",
        "optim.lr=1e-4",
        "optim.scheduler=constant",
        "optim.warmup_ratio=0.0",
        "optim.weight_decay=0.0",
        "trainer.precision=32-true",
        "trainer.gradient_clip_val=1.0",
        f"trainer.max_steps={steps}",
        f"seed={work.spec.seed}",
    ]


#: The tunesmith variants: name -> extra overrides.
VARIANTS: dict[str, list[str]] = {
    "same": ["data.packing=false", "data.group_by_length=false"],
    "defaults": [],
    # not run by default; pick with --variants
    "grouped": ["data.packing=false", "data.group_by_length=true"],
    "packed": ["data.packing=true", "data.group_by_length=false"],
    "packed_grouped": ["data.packing=true", "data.group_by_length=true"],
    "same_cold": ["data.packing=false", "data.group_by_length=false", "data.cache=false"],
    "defaults_cold": ["data.cache=false"],
}
DEFAULT_VARIANTS = ("same", "defaults")


#: Extra environment of every benchmarked process (``--threads`` sets the thread count).
CHILD_ENV: dict[str, str] = {}


def _run(cmd: list[str], out: Path, attempts: int = 2) -> dict:
    """Run one benchmarked process; a run killed from outside (a signal) is run again."""
    for attempt in range(attempts):
        full_env = {**os.environ, **CHILD_ENV, "BENCH_T0": repr(time.time())}
        proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True)
        if proc.returncode == 0 and out.is_file():
            return json.loads(out.read_text(encoding="utf-8"))
        if proc.returncode >= 0 or attempt == attempts - 1:
            break
        print(f"  (run killed by signal {-proc.returncode}; running it again)", flush=True)
    raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def prepared_examples(work: Workload) -> Path:
    """The train split in tunesmith's order, written once by its prepare stage.

    The plain loop reads this file, so both see the same examples in the same order and
    therefore the same batches (the same padding).
    """
    run_dir = work.dir / "prepared"
    path = run_dir / "data" / "train.jsonl"
    if not path.is_file():
        cmd = [
            sys.executable,
            "run.py",
            *common_overrides(work, STEPS),
            "stages=[prepare]",
            f"hydra.run.dir={run_dir}",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-4000:])
    return path


def run_plain(work: Workload, tmp: Path, steps: int) -> dict:
    out = tmp / "plain.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "plain_loop.py"),
        "--model",
        str(work.model),
        "--examples",
        str(prepared_examples(work)),
        "--steps",
        str(steps),
        "--max-length",
        str(work.spec.max_length),
        "--out",
        str(out),
    ]
    return _run(cmd, out)


def run_tunesmith(work: Workload, tmp: Path, name: str, extra: list[str], steps: int) -> dict:
    out = tmp / f"{name}.json"
    run_dir = tmp / f"run-{name}"
    cmd = [
        sys.executable,
        "run.py",
        *common_overrides(work, steps),
        *extra,
        f"hydra.run.dir={run_dir}",
        "+callbacks.bench_probe._target_=benchmarks.probe.BenchProbe",
        f"+callbacks.bench_probe.out={out}",
        f"+callbacks.bench_probe.name={name}",
    ]
    result = _run(cmd, out)
    result["overrides"] = extra
    return result


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    keys = (
        "tokens_per_s",
        "time_to_first_step_s",
        "peak_rss_mib",
        "train_s",
        "first_loss",
        "tokens_per_cpu_s",
        "cpu_to_first_step_s",
    )
    return {name: {k: median_of(runs, k) for k in keys} for name, runs in results.items()}


def ratios(summary: dict[str, dict[str, float]]) -> list[tuple[str, float, str, bool]]:
    """``(what, value, target, met)`` for each target of issue 8 that this benchmark measures."""
    plain = summary["plain"]
    rows = []
    if "same" in summary:
        same = summary["same"]
        r = same["tokens_per_s"] / plain["tokens_per_s"]
        rows.append(("same workload: tokens/s vs plain loop", r, ">= 0.97x", r >= 0.97))
        d = same["time_to_first_step_s"] - plain["time_to_first_step_s"]
        rows.append(
            ("same workload, warm: time to 1st step minus plain (s)", d, "<= +1.0 s", d <= 1.0)
        )
        m = same["peak_rss_mib"] / plain["peak_rss_mib"]
        rows.append(("same workload: peak RSS vs plain loop", m, "<= 1.1x", m <= 1.1))
    if "defaults" in summary:
        fast = summary["defaults"]
        r = fast["tokens_per_s"] / plain["tokens_per_s"]
        rows.append(("tunesmith defaults: non-pad tokens/s vs plain", r, ">= 1.6x", r >= 1.6))
        m = fast["peak_rss_mib"] / plain["peak_rss_mib"]
        rows.append(("tunesmith defaults: peak RSS vs plain loop", m, "<= 1.1x", m <= 1.1))
        d = fast["time_to_first_step_s"] - plain["time_to_first_step_s"]
        rows.append(("defaults, warm: time to 1st step minus plain (s)", d, "<= +1.0 s", d <= 1.0))
    # cold: nothing cached (issue 16): the prepare stage reads, cleans and tokenises everything
    for name, what in (("same_cold", "same workload"), ("defaults_cold", "defaults")):
        if name in summary:
            d = summary[name]["time_to_first_step_s"] - plain["time_to_first_step_s"]
            rows.append(
                (f"{what}, cold: time to 1st step minus plain (s)", d, "<= +1.5 s", d <= 1.5)
            )
    return rows


def run(rounds: int = 5, steps: int = STEPS, variants: list[str] | None = None) -> dict:
    """Build the workload, run every variant ``rounds`` times alternately; return the figures."""
    work = build()
    prepared_examples(work)
    names = variants or list(DEFAULT_VARIANTS)
    results: dict[str, list[dict]] = {"plain": [], **{n: [] for n in names}}
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for i in range(rounds):
            for name in ["plain", *names]:
                round_dir = tmp / f"{i}-{name}"
                round_dir.mkdir()
                if name == "plain":
                    r = run_plain(work, round_dir, steps)
                else:
                    r = run_tunesmith(work, round_dir, name, VARIANTS[name], steps)
                results[name].append(r)
                print(
                    f"  round {i + 1}/{rounds} {name:9s} {r['tokens_per_s']:8.0f} tok/s  "
                    f"first step {r['time_to_first_step_s']:5.2f} s  "
                    f"peak RSS {r['peak_rss_mib']:6.0f} MiB  loss@1 {r['first_loss']:.4f}  "
                    f"cpu: {r['tokens_per_cpu_s']:6.0f} tok/cpu-s, {r['cpu_to_first_step_s']:5.2f} "
                    "cpu-s to 1st step",
                    flush=True,
                )
    summary = summarize(results)
    return {
        "workload": json.loads(work.stats.read_text(encoding="utf-8")),
        "steps": steps,
        "rounds": rounds,
        "runs": results,
        "summary": summary,
        "ratios": ratios(summary),
    }


def print_report(report: dict) -> None:
    print(f"\nmedians of {report['rounds']} alternating rounds, {report['steps']} steps each")
    print(f"{'run':10s} {'tokens/s':>10s} {'1st step s':>11s} {'peak MiB':>9s}")
    for name, s in report["summary"].items():
        print(
            f"{name:10s} {s['tokens_per_s']:10.0f} {s['time_to_first_step_s']:11.2f} "
            f"{s['peak_rss_mib']:9.0f}"
        )
    for what, value, target, met in report["ratios"]:
        print(f"{what:50s} {value:7.3f}  target {target:9s} {'met' if met else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated of {list(VARIANTS)}",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads of every run (default: torch's own choice)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        CHILD_ENV.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    report = run(args.rounds, args.steps, [v for v in args.variants.split(",") if v])
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

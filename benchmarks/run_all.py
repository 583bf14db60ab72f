"""Run every benchmark and write ``benchmarks/RESULTS.md`` (``make bench`` runs this).

Each benchmark runs in a process of its own (``bench_startup.py``, ``bench_train.py``,
``bench_eval.py``) and hands its figures back as JSON; this script adds the machine
description (CPU model, cores, load, library versions) and compares every figure with the
targets of issue 8.

Run: ``python benchmarks/run_all.py`` (about 35 minutes on 2 cores) or ``--quick``/``--skip-demo``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_demo import render as render_demo  # noqa: E402
from benchmarks.bench_eval import smollm2_cached  # noqa: E402


def machine() -> dict[str, str]:
    """CPU model, cores, memory, load and the versions that matter."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        info["memory"] = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    for pkg in ("torch", "transformers", "peft", "lightning", "hydra-core", "tokenizers"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = "not installed"
    return info


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


#: Where each benchmark's JSON is kept (``--reuse`` reads it instead of running it again,
#: e.g. after RESULTS.md could not be written).
FIGURES = HERE / ".cache" / "run_all"
REUSE = False


def _bench(script: str, args: list[str], out: Path) -> dict:
    if REUSE and out.is_file():
        print(f"(reusing {out})", flush=True)
        return json.loads(out.read_text(encoding="utf-8"))
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(out)]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed (exit {proc.returncode})")
    return json.loads(out.read_text(encoding="utf-8"))


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def render(
    info: dict,
    loads: tuple[str, str],
    startup: dict,
    train: dict,
    evals: dict,
    args: argparse.Namespace,
    demo: dict | None = None,
    smollm2: dict | None = None,
    profile: dict | None = None,
) -> str:
    w = train["workload"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run_all.py` on {dt.datetime.now():%Y-%m-%d %H:%M}. "
        "Ratios are what to read: they compare runs made alternately under the same load.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        f"| load average (1/5/15 min) before | {loads[0]} |",
        f"| load average after | {loads[1]} |",
        f"| torch threads | {args.threads or 'torch default'} |",
        "",
        "## Targets",
        "",
        "| target | measured | goal | |",
        "|---|---|---|---|",
    ]
    for what, value, goal, met in train["ratios"]:
        lines.append(f"| {what} | {fmt(value, 3)} | {goal} | {'met' if met else '**missed**'} |")
    for label, r in startup.items():
        lines.append(
            f"| `python run.py {label}` | {fmt(r['median_s'])} s | < 2 s, no heavy import | "
            f"{'met' if r['met'] else '**missed**'} |"
        )
    for what, value, goal, met in (demo or {}).get("targets", []):
        lines.append(f"| {what} | {value} | {goal} | {'met' if met else '**missed**'} |")
    for e in (e for e in evals if e["model"] == "smollm2"):  # the demo's evaluation
        lines.append(
            f"| evaluation today vs when issue 16 was filed ({e['model']}), time | "
            f"{fmt(e['issue_ratio'])}x; loop vs `model.generate` identical "
            f"{e['identical']}/{e['answers']} | <= 0.5x, identical greedy answers | "
            f"{'met' if e['met'] else '**missed**'} |"
        )
    if smollm2:
        today = smollm2["summary"]["tunesmith"]
        for name, s_ in smollm2["summary"].items():
            if name in ("plain", "tunesmith"):
                continue
            r = (s_.get("late_tokens_per_s") or 0) / max(today.get("late_tokens_per_s") or 1, 1e-9)
            lines.append(
                f"| SmolLM2 LoRA fp32 training, `{name}` vs today's default, tokens/s (after "
                f"compilation) | {fmt(r)}x | >= 1.3x | {'met' if r >= 1.3 else '**missed**'} |"
            )
    lines += [
        "",
        "Where a target is missed, [docs/performance.md](../docs/performance.md) says why, with "
        "the profile below: [Start-up](../docs/performance.md#start-up) (time to the first "
        "step), [Generation](../docs/performance.md#generation) (evaluation) and "
        "[Compiling the model](../docs/performance.md#compiling-the-model-modelcompile) "
        "(SmolLM2 fp32 tokens/s). The demo's `32-true` rows stand in for a CPU without native "
        "bf16 (what `trainer.precision=auto` picks there).",
        "",
        "## Training (issue 8 workload)",
        "",
        f"Random Llama, hidden 256, 4 layers, 4 heads, intermediate 688 ({w['parameters']:,} "
        f"parameters, vocabulary {w['vocab']}); {w['records']} alpaca records, median "
        f"{w['tokens_median']:.0f} tokens, longest {w['tokens_max']} (truncated at 256; padding "
        f"to the longest of a random batch of 8 wastes {100 * w['padding_share_batch8']:.0f}% of "
        f"the tokens); LoRA r=8 alpha=16 on q_proj,v_proj, lr 1e-4, batch 8, fp32, seed 42, "
        f"{train['steps']} optimizer steps, no evaluation. Medians of {train['rounds']} rounds; "
        "each run is a fresh process.",
        "",
        "| run | non-pad tokens/s | time to 1st step | peak RSS | tokens per CPU-second | "
        "CPU-s to 1st step | loss at step 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in train["summary"].items():
        lines.append(
            f"| {name} | {fmt(s['tokens_per_s'], 0)} | {fmt(s['time_to_first_step_s'])} s | "
            f"{fmt(s['peak_rss_mib'], 0)} MiB | {fmt(s['tokens_per_cpu_s'], 0)} | "
            f"{fmt(s['cpu_to_first_step_s'])} | {s['first_loss']:.4f} |"
        )
    lines += [
        "",
        "* `plain`: the PyTorch + PEFT loop in `benchmarks/plain_loop.py` (padding to the longest).",
        "* `same`: tunesmith, same padding and math (`data.packing=false data.group_by_length=false`).",
        "* `defaults`: tunesmith with its defaults (`conf/data/demo.yaml`).",
        *(
            f"* `{name}`: tunesmith with `{' '.join(runs[0].get('overrides', []))}`."
            for name, runs in train["runs"].items()
            if name not in ("plain", "same", "defaults")
        ),
        "",
        "Every run of a round:",
        "",
        "| round | run | tokens/s | time to 1st step | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for name, runs in train["runs"].items():
        for i, r in enumerate(runs):
            lines.append(
                f"| {i + 1} | {name} | {fmt(r['tokens_per_s'], 0)} | "
                f"{fmt(r['time_to_first_step_s'])} s | {fmt(r['peak_rss_mib'], 0)} MiB |"
            )
    lines += [
        "",
        "## Start-up",
        "",
        "| command | median | runs | heaviest imports |",
        "|---|---|---|---|",
    ]
    for label, r in startup.items():
        heaviest = ", ".join(f"{m} {ms:.0f} ms" for ms, m in r["top_imports_ms"][:3])
        runs = ", ".join(f"{t:.2f}" for t in r["times_s"])
        lines.append(f"| `python run.py {label}` | {fmt(r['median_s'])} s | {runs} | {heaviest} |")
    if profile:
        lines += [
            "",
            "## Where a cold run's time to the first step goes (`profile_first_step.py`)",
            "",
            f"One cold run (`{profile['variant']}` settings, `data.cache=false`) under "
            f"`python -X importtime`: {fmt(profile['tunesmith_first_step_s'])} s to the first "
            f"optimizer step; the plain loop {fmt(profile['plain_first_step_s'])} s.",
            "",
            "| starts at (s) | takes (s) | phase |",
            "|---|---|---|",
            *(
                f"| {fmt(p['start_s'])} | {fmt(p['seconds'], 3)} | {p['phase']} |"
                for p in profile["phases"]
            ),
            "",
            "Imports the plain loop does not make (`-X importtime` self time): "
            + ", ".join(f"{k} {fmt(v)} s" for k, v in profile["extra_imports_s"].items())
            + ".",
        ]
    if smollm2:
        sm = smollm2["summary"]
        lines += [
            "",
            "## SmolLM2-135M LoRA training, fp32 (`bench_smollm2.py`)",
            "",
            f"{smollm2['rounds']} alternating rounds of {smollm2['steps']} steps; 2048² fp32 "
            f"matmul peak {', '.join(fmt(p, 1) for p in smollm2['matmul_peak_gflops'])} GFLOP/s "
            f"(before, after); {smollm2['flops']['flops_per_token'] / 1e6:.0f} MFLOP per token.",
            "",
            "| run | tokens/s | tokens/s, second half | vs plain | GFLOP/s | share of peak | "
            "1st step at | loss at step 1 | last loss |",
            "|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {fmt(x['tokens_per_s'], 0)} | {fmt(x.get('late_tokens_per_s') or 0, 0)}"
                f" | {fmt(x['tokens_per_s'] / sm['plain']['tokens_per_s'])}x | "
                f"{fmt(x['achieved_gflops'], 1)} | {100 * x['share_of_peak']:.0f}% | "
                f"{fmt(x['time_to_first_step_s'], 1)} s | {x['first_loss']:.6f} | "
                f"{x['last_loss']:.6f} |"
                for name, x in sm.items()
            ),
            "",
            "`tunesmith`: today's default (eager); `compiled`: `model.compile=true` "
            "(torch.compile of the decoder layers; its first step includes compiling).",
        ]
    lines += ["", "## Evaluation", ""]
    for e in evals:
        what = (
            "The demo's evaluation (SmolLM2-135M-Instruct + its LoRA adapter, base = adapter "
            "disabled) on the demo run's test split"
            if e["model"] == "smollm2"
            else "the workload's random Llama on its test split (answers run to the limit)"
        )
        sides = "; ".join(
            f"{k} {fmt(s['loop_s'])} s vs {fmt(s['generate_s'])} s" for k, s in e["sides"].items()
        )
        lines += [
            f"* {what}: {e['prompts']} prompts x {len(e['sides'])} sides, greedy, batches of "
            f"{e['batch_size']}, `max_new_tokens={e['max_new_tokens']}`, through "
            "`framework.model.generation.generate`: the greedy loop (finished rows leave the "
            f"batch) took {fmt(e['loop_s'])} s, `model.generate` over the same batches "
            f"{fmt(e['generate_s'])} s: **{fmt(e['ratio'])}x the time** ({sides}); decoded "
            f"row-steps {e['row_steps']['loop']:,} vs {e['row_steps']['generate']:,}; "
            f"{e['identical']} of {e['answers']} answers identical. When issue 16 was filed "
            f"(`model.generate`, batches of 16, `max_new_tokens=64`): {fmt(e['issue_s'])} s, "
            f"so today takes **{fmt(e['issue_ratio'])}x** that time; {e['issue_prefix']} of "
            f"{e['answers']} answer pairs are equal or one starts the other (greedy answers cut "
            "at different lengths: `max_new_tokens` is now sized from the references).",
        ]
    if demo:
        lines += [
            "",
            "## The demo and the methods on SmolLM2-135M-Instruct (`bench_demo.py`)",
            "",
            "`python run.py` end to end (prepare, train one epoch, evaluate base and tuned on "
            "the 50 test examples, export), once per precision"
            + (
                f" (figures read from `{args.demo_json}`, measured earlier on this machine with "
                "nothing else running):"
                if args.demo_json
                else ":"
            ),
            "",
            render_demo({**demo, "targets": []}),
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating training rounds")
    parser.add_argument("--quick", action="store_true", help="2 rounds, fewer repeats")
    parser.add_argument("--threads", type=int, help="torch threads of the training runs")
    parser.add_argument("--variants", default="same,defaults,same_cold,defaults_cold")
    parser.add_argument(
        "--eval-models", default="workload,smollm2", help="smollm2 runs only if it is cached"
    )
    parser.add_argument("--eval-samples", type=int, default=50, help="the demo's test split: 50")
    parser.add_argument(
        "--skip-demo", action="store_true", help="skip bench_demo.py (~15 minutes on 2 cores)"
    )
    parser.add_argument(
        "--demo-json", type=Path, help="use these bench_demo.py --json figures instead of a run"
    )
    parser.add_argument(
        "--skip-smollm2", action="store_true", help="skip bench_smollm2.py (~10 minutes)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help=f"use the figures a previous run left in {FIGURES.relative_to(ROOT)} when present",
    )
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    before = load_average()
    global REUSE
    REUSE = args.reuse
    FIGURES.mkdir(parents=True, exist_ok=True)
    tmp = FIGURES  # each benchmark's figures are kept here (see --reuse)
    startup = _bench("bench_startup.py", ["--repeat", "3" if args.quick else "5"], tmp / "s.json")
    train_args = ["--rounds", str(rounds), "--variants", args.variants]
    if args.threads:
        train_args += ["--threads", str(args.threads)]
    train = _bench("bench_train.py", train_args, tmp / "t.json")
    evals = []
    for model in args.eval_models.split(","):
        if model == "smollm2" and not smollm2_cached():
            print("SmolLM2 is not converted yet (run the demo once): its eval is skipped")
            continue
        eval_args = ["--model", model, "--samples", str(args.eval_samples)]
        eval_args += ["--repeat", "1" if args.quick else "2"]
        if args.threads:
            eval_args += ["--threads", str(args.threads)]
        evals.append(_bench("bench_eval.py", eval_args, tmp / f"e-{model}.json"))
    profile = _bench("profile_first_step.py", ["--variant", "defaults"], tmp / "p.json")
    smollm2 = None
    if smollm2_cached() and not args.skip_smollm2:
        smollm2 = _bench(
            "bench_smollm2.py",
            ["--rounds", "2", "--steps", "30"]
            + (["--threads", str(args.threads)] if args.threads else []),
            tmp / "m.json",
        )
    demo = None
    if args.demo_json:
        demo = json.loads(args.demo_json.read_text(encoding="utf-8"))
    elif not args.skip_demo and smollm2_cached():
        demo = _bench("bench_demo.py", ["--steps", "10"], tmp / "d.json")
    text = render(
        machine(), (before, load_average()), startup, train, evals, args, demo, smollm2, profile
    )
    args.out.write_text(text, encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

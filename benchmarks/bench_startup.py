"""Start-up benchmark: ``python run.py --help`` and ``python run.py --cfg job`` under 2 s.

Each command runs ``--repeat`` times in a fresh process; the median wall time is the figure.
A second pass with ``python -X importtime`` lists the heaviest imports and checks that no
heavy library (torch, transformers, lightning, peft) is loaded just to answer.

Run: ``python benchmarks/bench_startup.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"--help": ["run.py", "--help"], "--cfg job": ["run.py", "--cfg", "job"]}
HEAVY = ("torch", "transformers", "lightning", "peft", "matplotlib", "scipy")
TARGET_S = 2.0


def time_command(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return times


def import_profile(args: list[str]) -> tuple[list[tuple[float, str]], list[str]]:
    """``(top top-level imports by cumulative ms, heavy packages loaded)``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True
    )
    top: list[tuple[float, str]] = []
    loaded: set[str] = set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        module = name.strip()
        loaded.add(module.split(".")[0])
        if not name[1:].startswith(" "):  # a top-level import of the entry point
            top.append((int(cumulative) / 1000, module))
    return sorted(top, reverse=True)[:6], sorted(p for p in HEAVY if p in loaded)


def run(repeat: int = 5) -> dict:
    results = {}
    for label, args in COMMANDS.items():
        times = time_command(args, repeat)
        top, heavy = import_profile(args)
        results[label] = {
            "median_s": statistics.median(times),
            "times_s": times,
            "top_imports_ms": top,
            "heavy_imports": heavy,
            "met": statistics.median(times) < TARGET_S and not heavy,
        }
    return results


def print_report(results: dict) -> None:
    for label, r in results.items():
        print(
            f"python run.py {label:9s} median {r['median_s']:.2f} s  (target < {TARGET_S} s)  "
            f"heavy imports: {', '.join(r['heavy_imports']) or 'none'}  "
            f"{'met' if r['met'] else 'MISSED'}"
        )
        print(
            "    heaviest imports: "
            + ", ".join(f"{m} {ms:.0f} ms" for ms, m in r["top_imports_ms"])
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = run(args.repeat)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

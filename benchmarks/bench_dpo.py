"""``python run.py experiment=demo_dpo`` (and ``demo_sft_dpo``) as a user runs them, measured.

Prints the CPU (model, cores, the flags that matter for torch: avx2, avx512*, amx*), the load
average before and after, and for each recipe: wall time of the whole job (prepare, train,
evaluate base and tuned, export), peak RSS, preference accuracy / reward margin / exact match
base -> tuned, and whether issue 15's targets hold (wall time <= 5 min on 2 cores, tuned
preference accuracy >= base + 0.3, exact match not below the SFT demo's base, 0.00).

Run it on a quiet machine (the load average is printed so a busy one shows); the model must
be converted already (``python run.py`` once).

    python benchmarks/bench_dpo.py
    python benchmarks/bench_dpo.py --recipes demo_dpo,demo_sft_dpo --json dpo.json
    python benchmarks/bench_dpo.py --extra trainer.precision=32-true
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_eval import smollm2_cached  # noqa: E402
from benchmarks.methods_memory import run_measured  # noqa: E402

#: The SFT demo's base exact match (README "Measured"): the DPO recipe must not go below it.
SFT_DEMO_BASE_EXACT_MATCH = 0.0
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def cpu() -> dict:
    """The CPU model, the cores this process may use, and torch-relevant flags."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {"model": model, "cores": cores, "flags": [f for f in FLAGS if f in flags]}


def recipe(name: str, extra: list[str], workdir: Path) -> dict:
    """One recipe in a fresh process; its figures from metrics.json."""
    run_dir = workdir / name
    overrides = [f"experiment={name}", *extra]
    cmd = [sys.executable, str(ROOT / "run.py"), *overrides, f"hydra.run.dir={run_dir}"]
    print(f"$ python run.py {' '.join(overrides)}", flush=True)
    env = {**os.environ, "TUNESMITH_OUTPUT": str(workdir / "outputs")}
    load_before = os.getloadavg()[0]
    code, wall, rss, stderr = run_measured(cmd, env)
    out: dict = {"recipe": name, "returncode": code, "wall_s": round(wall, 1),
                 "peak_rss_mib": round(rss), "load_before": round(load_before, 2),
                 "load_after": round(os.getloadavg()[0], 2)}  # fmt: skip
    if code != 0:
        out["stderr_tail"] = stderr[-3000:]
        print(out["stderr_tail"], file=sys.stderr)
        return out
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():  # a chain: the last step's run dir holds the metrics
        found = sorted(run_dir.rglob("metrics.json"))
        metrics = found[-1] if found else metrics
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        keys = ("preference_accuracy", "reward_margin", "exact_match", "perplexity")
        out["metrics"] = {
            side: {k: m.get(side, {}).get(k) for k in keys} for side in ("base", "tuned")
        }
    return out


def targets(row: dict) -> list[tuple[str, str, bool]]:
    """``(what, measured, met)`` for issue 15's targets."""
    if "metrics" not in row:
        return [("finished", f"exit {row['returncode']}", False)]
    base, tuned = row["metrics"]["base"], row["metrics"]["tuned"]
    pa_b, pa_t = base["preference_accuracy"], tuned["preference_accuracy"]
    em_t = tuned["exact_match"]
    return [
        ("wall time <= 5 min", f"{row['wall_s'] / 60:.2f} min", row["wall_s"] <= 300),
        ("preference accuracy: tuned >= base + 0.3", f"{pa_b:.2f} -> {pa_t:.2f}",
         pa_t >= pa_b + 0.3),
        ("exact match: tuned >= SFT demo's base (0.00)", f"{base['exact_match']:.2f} -> {em_t:.2f}",
         em_t >= SFT_DEMO_BASE_EXACT_MATCH),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="demo_dpo")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not smollm2_cached():
        raise SystemExit("SmolLM2 is not converted yet: run `python run.py` once first.")
    import torch

    info = cpu()
    print(f"CPU: {info['model']} | cores: {info['cores']} | flags: {' '.join(info['flags'])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads | load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-dpo-") as tmp:
        for name in args.recipes.split(","):
            row = recipe(name, list(args.extra), Path(tmp))
            rows.append(row)
            print(json.dumps(row, indent=2))
            for what, measured, met in targets(row):
                print(f"  {'OK  ' if met else 'MISS'} {what}: {measured}")
    result = {"cpu": info, "torch": torch.__version__, "recipes": rows,
              "total_s": round(time.time() - started, 1)}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

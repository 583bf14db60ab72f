"""The demo end to end, and full / lora / qlora on SmolLM2, as a user runs them.

Two parts, each run in fresh ``python run.py`` processes:

* **demo**: the whole default job (``python run.py``: prepare, train, evaluate base and tuned,
  export) once per precision (``bf16-mixed``, ``32-true``). Reported: wall time, training
  tokens/s (non-pad tokens, from ``benchmarks/probe.py``), peak RSS and the test split's
  exact match, base and tuned. This is issue 2's target (at most 5 minutes, tuned exact match
  at least 0.8 and 0.5 above base) and issue 8's precision choice (default to the faster one
  when the accuracy target still holds).
* **methods**: ``method=full|lora|qlora`` on the demo's own settings (batch 8, packing, the
  default precision), ``--steps`` optimizer steps of training only: tokens/s and peak RSS.

The model must be converted already (run ``python run.py`` once; ~20 s).

    python benchmarks/bench_demo.py                       # both parts, ~15 minutes on 2 cores
    python benchmarks/bench_demo.py --parts methods --steps 10
    python benchmarks/bench_demo.py --precisions bf16-mixed --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_eval import smollm2_cached  # noqa: E402
from benchmarks.bench_smollm2 import cpu_description, describe  # noqa: E402
from benchmarks.methods_memory import run_measured  # noqa: E402

PRECISIONS = ("bf16-mixed", "32-true")
METHODS = ("full", "lora", "qlora")


def _run(overrides: list[str], workdir: Path, name: str) -> dict:
    """``python run.py <overrides>`` in a fresh process under ``workdir``; its figures."""
    probe = workdir / f"{name}.probe.json"
    run_dir = workdir / name
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *overrides,
        f"hydra.run.dir={run_dir}",
        "+callbacks.bench_probe._target_=benchmarks.probe.BenchProbe",
        f"+callbacks.bench_probe.out={probe}",
    ]
    print(f"$ python run.py {' '.join(overrides)}", flush=True)
    env = {**os.environ, "TUNESMITH_OUTPUT": str(workdir / "outputs"), "BENCH_T0": str(time.time())}
    code, wall, peak_rss_mib, stderr = run_measured(cmd, env)
    result: dict = {
        "name": name,
        "overrides": overrides,
        "returncode": code,
        "wall_s": wall,
        "peak_rss_mib": peak_rss_mib,
    }
    if code != 0:
        result["stderr_tail"] = stderr[-3000:]
        print(f"{name} failed (exit {code}):\n{result['stderr_tail']}", file=sys.stderr)
        return result
    if probe.exists():
        p = json.loads(probe.read_text(encoding="utf-8"))
        result.update(
            steps=p["steps"],
            tokens_per_s=p["tokens_per_s"],
            time_to_first_step_s=p["time_to_first_step_s"],
            train_s=p["train_s"],
        )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        result["last_ckpt_mib"] = ckpt.stat().st_size / 2**20
    summary = run_dir / "train_summary.json"
    if summary.exists():  # what precision=auto / dtype=auto chose on this machine, and why
        hardware = json.loads(summary.read_text(encoding="utf-8")).get("hardware") or {}
        keys = ("precision", "precision_reason", "dtype", "dtype_reason", "cpu_threads")
        result["hardware"] = {k: hardware.get(k) for k in keys}
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text(encoding="utf-8"))
        result["metrics"] = {
            side: {k: m[side].get(k) for k in ("exact_match", "perplexity")}
            for side in ("base", "tuned")
        }
    return result


def demo(precisions: list[str], workdir: Path) -> list[dict]:
    """The whole default job once per precision (no override for the configured default)."""
    from omegaconf import OmegaConf

    default = OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml").precision
    if str(default) == "auto":  # what auto picks on this machine (framework/model/hardware.py)
        from framework.model.hardware import run_precision

        default = run_precision({"precision": "auto"})[0].value
    rows = []
    for precision in precisions:
        overrides = [] if precision == default else [f"trainer.precision={precision}"]
        row = _run(overrides, workdir, f"demo-{precision}")
        row["precision"] = precision
        row["default"] = precision == default
        rows.append(row)
    return rows


def methods(names: list[str], steps: int, workdir: Path) -> list[dict]:
    """Training only, ``steps`` optimizer steps, the demo's settings otherwise."""
    common = ["stages=[prepare,train]", f"trainer.max_steps={steps}"]
    common += ["trainer.check_val_every_n_epoch=100"]  # training alone: no validation pass
    return [_run([*common, f"method={m}"], workdir, f"method-{m}") for m in names]


def targets(demo_rows: list[dict]) -> list[tuple[str, str, str, bool]]:
    """``(what, measured, goal, met)`` for issue 2's demo target and issue 8's precision."""
    out = []
    ok = [r for r in demo_rows if r["returncode"] == 0 and "metrics" in r]
    for r in ok:
        base = r["metrics"]["base"]["exact_match"]
        tuned = r["metrics"]["tuned"]["exact_match"]
        label = f"demo ({r['precision']}{', the default' if r['default'] else ''})"
        out.append((f"{label}: wall time", f"{r['wall_s'] / 60:.2f} min", "<= 5 min",
                    r["wall_s"] <= 300))  # fmt: skip
        out.append((f"{label}: exact match base -> tuned", f"{base:.2f} -> {tuned:.2f}",
                    ">= 0.8 and >= base + 0.5", tuned >= 0.8 and tuned - base >= 0.5))  # fmt: skip
    if len(ok) >= 2:
        fastest = max(ok, key=lambda r: r.get("tokens_per_s", 0))
        default = next((r for r in ok if r["default"]), None)
        holds = [r for r in ok if r["metrics"]["tuned"]["exact_match"] >= 0.8]
        best_holding = max(holds, key=lambda r: r.get("tokens_per_s", 0)) if holds else None
        met = default is not None and default is best_holding
        out.append(("precision default is the fastest that keeps the demo's accuracy",
                    f"default {default['precision'] if default else '?'}, fastest "
                    f"{fastest['precision']} ({fastest.get('tokens_per_s', 0):,.0f} tok/s)",
                    "default = fastest holding the target", met))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="demo,methods")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=10, help="training steps per method")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not smollm2_cached():
        raise SystemExit("SmolLM2 is not converted yet: run `python run.py` once first.")
    parts = args.parts.split(",")
    result: dict = {"demo": [], "methods": [], "steps": args.steps, "cpu": cpu_description()}
    print(f"CPU: {describe(result['cpu'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-demo-") as tmp:
        if "demo" in parts:
            result["demo"] = demo(args.precisions.split(","), Path(tmp))
        if "methods" in parts:
            result["methods"] = methods(args.methods.split(","), args.steps, Path(tmp))
    result["targets"] = targets(result["demo"])
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def render(result: dict) -> str:
    """The figures as Markdown (``run_all.py`` puts this into RESULTS.md)."""
    lines = []
    if result.get("cpu"):
        lines += [f"CPU: {describe(result['cpu'])}", ""]
    if result["demo"]:
        lines += [
            "| `python run.py` | wall time | train tokens/s | time to 1st step | peak RSS | "
            "exact match base -> tuned | perplexity base -> tuned | last.ckpt |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result["demo"]:
            label = "(defaults)" if r["default"] else f"trainer.precision={r['precision']}"
            if r["returncode"]:
                lines.append(f"| {label} | failed (exit {r['returncode']}) | | | | | | |")
                continue
            m = r.get("metrics", {})
            em = pp = "n/a"
            if m:
                em = f"{m['base']['exact_match']:.2f} -> {m['tuned']['exact_match']:.2f}"
                pp = f"{m['base']['perplexity']:.3f} -> {m['tuned']['perplexity']:.3f}"
            lines.append(
                f"| {label} | {r['wall_s']:.0f} s | {r.get('tokens_per_s', 0):,.0f} | "
                f"{r.get('time_to_first_step_s', 0):.1f} s | {r['peak_rss_mib']:,.0f} MiB | "
                f"{em} | {pp} | {r.get('last_ckpt_mib', 0):,.1f} MiB |"
            )
        chosen = [r["hardware"] for r in result["demo"] if r.get("default") and r.get("hardware")]
        if chosen:
            hw = chosen[0]
            lines += [
                "",
                f"The defaults chose: {hw.get('precision_reason')}; {hw.get('dtype_reason')}; "
                f"{hw.get('cpu_threads')} CPU threads.",
            ]
        lines.append("")
    if result["methods"]:
        lines += [
            f"Training only, {result['steps']} optimizer steps with the demo's settings "
            "(batch 8, packing, default precision), no validation:",
            "",
            "| method | train tokens/s | time to 1st step | peak RSS | wall time |",
            "|---|---|---|---|---|",
        ]
        for r in result["methods"]:
            name = r["overrides"][-1]
            if r["returncode"]:
                lines.append(f"| `{name}` | failed (exit {r['returncode']}) | | | |")
                continue
            lines.append(
                f"| `{name}` | {r.get('tokens_per_s', 0):,.0f} | "
                f"{r.get('time_to_first_step_s', 0):.1f} s | {r['peak_rss_mib']:,.0f} MiB | "
                f"{r['wall_s']:.0f} s |"
            )
        lines.append("")
    if result["targets"]:
        lines += ["| target | measured | goal | |", "|---|---|---|---|"]
        for what, value, goal, met in result["targets"]:
            lines.append(f"| {what} | {value} | {goal} | {'met' if met else '**missed**'} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

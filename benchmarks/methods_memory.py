"""Peak memory (RSS) and wall time of full / lora / qlora fine-tuning of SmolLM2 on the CPU.

Each method runs as its own ``python run.py`` process (prepare + a few training steps on the
demo data), so each figure is that process's own peak resident set size (``wait4``).

    python benchmarks/methods_memory.py                  # full, lora, qlora; 5 steps each
    python benchmarks/methods_memory.py --methods lora qlora --steps 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_measured(
    cmd: list[str], env: dict[str, str] | None = None
) -> tuple[int, float, float, str]:
    """Run ``cmd`` from the repository root in a fresh process, stdout discarded.

    Returns:
        ``(exit code, wall seconds, the process's own peak RSS in MiB (wait4), stderr)``.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024, stderr


def measure(method: str, steps: int = 5, workdir: Path | None = None, *extra: str) -> dict:
    """Train SmolLM2 with ``method`` for ``steps`` steps in a fresh process; return its figures.

    Returns:
        ``{"method", "steps", "peak_rss_mib", "wall_s", "trainable", "total", "returncode"}``.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"ts-mem-{method}-"))
    run_dir = workdir / method
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "model=smollm2",
        f"method={method}",
        "stages=[prepare,train]",
        f"trainer.max_steps={steps}",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.check_val_every_n_epoch=100",  # no validation: measure training alone
        "callbacks.model_checkpoint=null",
        "data.batch_size=4",
        "data.max_length=128",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    code, wall, peak_rss_mib, stderr = run_measured(cmd)
    summary_path = run_dir / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    result = {
        "method": method,
        "steps": steps,
        "peak_rss_mib": round(peak_rss_mib, 1),
        "wall_s": round(wall, 1),
        "train_s": summary.get("wall_time_s"),
        "trainable": summary.get("trainable"),
        "total": summary.get("total"),
        "returncode": code,
    }
    if code != 0:
        result["stderr_tail"] = stderr[-2000:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="ts-mem-") as tmp:
        for method in args.methods:
            rows.append(measure(method, args.steps, Path(tmp)))
            r = rows[-1]
            if r["returncode"]:
                print(f"{method} failed:\n{r['stderr_tail']}", file=sys.stderr)
    print(
        f"# SmolLM2-135M, demo data, batch 4 x <=128 tokens, fp32, {args.steps} steps; {platform.processor()}"
    )
    print(f"{'method':<8} {'peak RSS MiB':>12} {'wall s':>8} {'train s':>8} {'trainable':>12}")
    for r in rows:
        print(
            f"{r['method']:<8} {r['peak_rss_mib']:>12.0f} {r['wall_s']:>8.1f} "
            f"{r['train_s'] or 0:>8.1f} {r['trainable'] or 0:>12,}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

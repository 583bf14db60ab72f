"""Where the time to the first optimizer step goes, in one tunesmith run and one plain loop.

Issue 16's start-up target compares tunesmith's time to its first optimizer step with the
hand-written loop's (``plain_loop.py``) on ``bench_train.py``'s workload. This script runs each
once, cold (``data.cache=false``: nothing prepared, nothing tokenised), and splits tunesmith's
time into the phases of its run: start-up and config checks, Hydra, the plugins, importing
Lightning (``seed_everything`` is its first import), each part of the prepare stage, building
the model, applying the method (importing PEFT), and Lightning's ``fit`` until step 1 ends. It
also reports, from ``python -X importtime`` of the same run, what importing Lightning costs
beyond torch/transformers/PEFT, which the plain loop pays as well.

The phases are timed by wrapping the named functions when their module is first imported
(an import hook), so the run's import order is the real one.

Run: ``python benchmarks/profile_first_step.py [--variant same|defaults] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: module -> functions (dotted inside the module) timed in the inner run, in call order.
PHASES: dict[str, list[str]] = {
    "framework.config_check": ["check_command_line"],
    "hydra._internal.hydra": ["Hydra.get_mode", "Hydra.compose_config"],
    "hydra.core.utils": ["run_job"],
    "framework.manager": ["build_plugin_manager"],
    "framework.pipeline": ["seed_everything"],
    "framework.data.prepare": [
        "prepare",
        "load_all",
        "prepare_tokenizer",
        "clean",
        "split_sources",
        "Encoder.hand_over",
    ],
    "framework.data.cleaning": ["near_dedup", "length_filter"],
    "framework.data.report": ["build_report", "write_report_files"],
    "framework.run": ["Run.ensure_model"],
    "framework.train.stage": ["build_trainer"],
    "plugins.methods.peft_common": ["peft_config"],
}

#: Top-level packages whose import tunesmith adds to the plain loop's (torch, transformers
#: and PEFT are imported by both).
EXTRA_PACKAGES = (
    "lightning",
    "lightning_fabric",
    "lightning_utilities",
    "torchmetrics",
    "matplotlib",
    "scipy",
    "hydra",
    "omegaconf",
    "antlr4",
    "pluggy",
    "framework",
    "plugins",
    "rich",
)


# ----------------------------------------------------------------------------- inner run


class _Timer(importlib.abc.MetaPathFinder):
    """Wrap the functions of :data:`PHASES` as their modules are imported."""

    def __init__(self, t0: float, marks: list[tuple[float, float, str]]) -> None:
        self.t0, self.marks = t0, marks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in PHASES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run_module(module)
            for dotted in PHASES[name]:
                self._wrap(module, dotted, f"{name.rsplit('.', 1)[-1]}.{dotted}")

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def _wrap(self, module: Any, dotted: str, label: str) -> None:
        owner = module
        *parents, attr = dotted.split(".")
        for part in parents:
            owner = getattr(owner, part)
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.marks.append((start - self.t0, time.time() - start, label))

        setattr(owner, attr, timed)


def inner(out: Path, overrides: list[str]) -> None:
    """Run ``run.py`` in this process with the phase timers; write the marks to ``out``."""
    t0 = float(os.environ.get("BENCH_T0", time.time()))
    marks: list[tuple[float, float, str]] = []
    sys.meta_path.insert(0, _Timer(t0, marks))
    sys.path.insert(0, str(ROOT))
    sys.argv = ["run.py", *overrides]
    import runpy

    try:
        runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise
    finally:
        out.write_text(json.dumps(sorted(marks)), encoding="utf-8")


# ----------------------------------------------------------------------------- outer


def extra_import_s(stderr: str) -> dict[str, float]:
    """Seconds of ``-X importtime`` self time per top-level package of :data:`EXTRA_PACKAGES`."""
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, _, name = line.split(":", 1)[1].split("|")
        top = name.strip().split(".")[0]
        if top in EXTRA_PACKAGES:
            totals[top] = totals.get(top, 0.0) + int(self_us) / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def run(variant: str = "same") -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_train import VARIANTS, common_overrides, prepared_examples, run_plain
    from benchmarks.workload import build

    work = build()
    prepared_examples(work)
    extra = [*VARIANTS[variant], "data.cache=false"]
    with tempfile.TemporaryDirectory(prefix="tunesmith-profile-") as name:
        tmp = Path(name)
        plain = run_plain(work, tmp, 3)
        marks_path, probe = tmp / "marks.json", tmp / "probe.json"
        cmd = [
            sys.executable,
            "-X",
            "importtime",
            str(Path(__file__).resolve()),
            "--inner",
            str(marks_path),
            "--",
            *common_overrides(work, 3),
            *extra,
            f"hydra.run.dir={tmp / 'run'}",
            "+callbacks.bench_probe._target_=benchmarks.probe.BenchProbe",
            f"+callbacks.bench_probe.out={probe}",
        ]
        env = {**os.environ, "BENCH_T0": repr(time.time())}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not probe.is_file():
            raise RuntimeError(f"the profiled run failed:\n{proc.stderr[-3000:]}")
        first = json.loads(probe.read_text(encoding="utf-8"))["time_to_first_step_s"]
        marks = json.loads(marks_path.read_text(encoding="utf-8"))
    trainer = [m for m in marks if m[2].endswith("build_trainer")]
    if trainer:  # from the trainer built to the end of step 1: Lightning's fit set-up + a step
        start = trainer[0][0] + trainer[0][1]
        marks.append((start, first - start, "Trainer.fit until optimizer step 1 ends"))
    return {
        "variant": variant,
        "plain_first_step_s": plain["time_to_first_step_s"],
        "tunesmith_first_step_s": first,
        "phases": [
            {"start_s": round(s, 3), "seconds": round(d, 3), "phase": n} for s, d, n in marks
        ],
        "extra_imports_s": {k: round(v, 3) for k, v in extra_import_s(proc.stderr).items()},
        "note": "-X importtime slows imports a little; read the phases as shares",
    }


def print_report(r: dict[str, Any]) -> None:
    print(
        f"cold, {r['variant']}: plain loop {r['plain_first_step_s']:.2f} s, tunesmith "
        f"{r['tunesmith_first_step_s']:.2f} s to the first optimizer step (with -X importtime)"
    )
    print(f"{'starts at':>9s} {'takes':>7s}  phase (run_job: the whole Hydra job)")
    for p in r["phases"]:
        print(f"{p['start_s']:9.2f} {p['seconds']:7.3f}  {p['phase']}")
    total = sum(r["extra_imports_s"].values())
    print(f"imports the plain loop does not make: {total:.2f} s")
    print("    " + ", ".join(f"{k} {v:.2f} s" for k, v in r["extra_imports_s"].items()))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--inner":
        inner(Path(sys.argv[2]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="same", help="a bench_train.py variant")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report = run(args.variant)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

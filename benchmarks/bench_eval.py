"""Evaluation benchmark: the demo's evaluation (greedy answers of the base and the tuned model
on the test split) through tunesmith's greedy loop, against ``model.generate`` over the same
batches (how evaluation generated before the loop), with the same answers.

Both variants go through ``framework.model.generation.generate`` as the evaluate stage calls
it (prompts tokenized once and batched by token length, ``evaluator.batch_size`` 16,
``max_new_tokens`` sized from the references): ``loop=True`` decodes greedily with a KV cache
and drops each row from its batch at its end-of-turn token; ``loop=False`` runs each batch
through ``model.generate``, which computes every row until the last one has ended. The two
alternate ``--repeat`` times (the order swapped each round); the figures are medians. Every
answer must be the same in both.

* ``--model smollm2`` (the default when its converted checkpoint is in the cache): the demo:
  SmolLM2-135M-Instruct with the LoRA adapter ``python run.py`` trains, the ``tuned`` side,
  and the same model with its adapter disabled, the ``base`` side (as the evaluate stage
  scores them), on the demo run's test split. ``--run DIR`` names a finished demo run;
  without it one is trained once into the tunesmith cache (``stages=[prepare,train]``, a few
  minutes) and reused.
* ``--model workload``: the benchmark workload's random Llama (``base`` only) on its test
  split; its answers run to ``max_new_tokens``, so there is nothing to drop: this checks that
  the loop costs nothing there.

Also printed: the CPU model and the flags that decide its speed, the process CPU time of
each variant (with ``--threads 1`` a steadier measure of the work than wall time on a shared
machine), and the decoded row-steps
(one row of a batch through one decoding step) of each variant: what ``model.generate``
spends on rows that had finished.

Run: ``python benchmarks/bench_eval.py --model smollm2`` (``--threads 2`` on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_smollm2 import cpu_description, describe  # noqa: E402
from benchmarks.workload import build  # noqa: E402

#: Issue 16: evaluation takes at most half the time it took when the issue was filed.
TARGET = 0.5
#: variant -> (greedy loop?, evaluator settings): ``loop`` is today's evaluation, ``generate``
#: the same batches through ``model.generate`` (its answers must be identical), ``issue`` how
#: evaluation generated when issue 16 was filed: ``model.generate``, batches of 16 and
#: ``max_new_tokens: 64`` whatever the references.
VARIANTS = {"loop": True, "generate": False, "issue": False}
ISSUE_TIME = {"generation_batch_size": 16, "max_new_tokens": 64}


def _cache() -> Path:
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def _run_py(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])


def _prepared_test(overrides: list[str], run_dir: Path) -> Path:
    """The test split written by tunesmith's prepare stage (run once, then reused)."""
    path = run_dir / "data" / "test.jsonl"
    if not path.is_file():
        _run_py(["stages=[prepare]", *overrides, f"hydra.run.dir={run_dir}"])
    return path


def demo_run(run_dir: Path | None) -> Path:
    """A finished demo run (prepare + train with the demo's settings), trained once if needed."""
    run_dir = run_dir or _cache() / "bench" / "smollm2-demo-eval"
    if not (run_dir / "artifact").is_dir():
        print(f"training the demo once into {run_dir} (a few minutes)", flush=True)
        _run_py(["stages=[prepare,train]", f"hydra.run.dir={run_dir}"])
    return run_dir


def smollm2_cached() -> bool:
    return (_cache() / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file()


def load(model: str, run_dir: Path | None) -> tuple[object, object, list[dict], dict]:
    """``(model, tokenizer, examples, sides)``: ``sides`` maps ``base``/``tuned`` to a
    function returning the context in which the model is that side."""
    from omegaconf import OmegaConf

    from framework.evaluate.sources import TunedSource, load_tuned
    from framework.manager import build_plugin_manager
    from framework.resolvers import register_resolvers
    from framework.run import Run, read_jsonl

    register_resolvers()
    plugins = build_plugin_manager()
    if model == "workload":
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from framework.cli import CONFIG_DIR

        work = build()
        overrides = ["data=alpaca", f"data.path={work.records}", "model=hf"]
        overrides.append(f"model.path={work.model}")
        test = _prepared_test(overrides, work.dir / "prepared-eval")
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        GlobalHydra.instance().clear()
        net, tokenizer = plugins.hook.tunesmith_build_model(name=str(cfg.model.name), cfg=cfg)
        return net, tokenizer, read_jsonl(test), {"base": nullcontext}
    src = demo_run(run_dir)
    cfg = OmegaConf.load(src / "config.yaml")
    run = Run(cfg=cfg, dir=src, plugins=plugins)
    tuned, tokenizer = load_tuned(run, TunedSource("artifact", src / "artifact", cfg.method.name))
    # as the evaluate stage scores an adapter run: base = the tuned model, adapter disabled
    return (
        tuned,
        tokenizer,
        read_jsonl(src / "data" / "test.jsonl"),
        {
            "base": tuned.disable_adapter,
            "tuned": nullcontext,
        },
    )


def run(
    model: str = "smollm2",
    samples: int | None = None,
    repeat: int = 2,
    batch_size: int = 16,
    run_dir: Path | None = None,
) -> dict:
    import torch
    from omegaconf import OmegaConf

    from framework.data.chat import prompt_of, reference_of
    from framework.model import generation
    from framework.model.generation import generate, prompt_text, resolve_max_new_tokens

    cpu = cpu_description()
    print(f"CPU: {describe(cpu)}; torch threads {torch.get_num_threads()}", flush=True)
    net, tokenizer, examples, sides = load(model, run_dir)
    examples = [e for e in examples if any(m.get("role") == "assistant" for m in e["messages"])]
    examples = examples[:samples] if samples else examples
    prompts = [prompt_text(tokenizer, prompt_of(e)) for e in examples]
    references = [reference_of(e) for e in examples]
    ev = OmegaConf.create(
        {"generation_batch_size": batch_size, "max_new_tokens": None, "do_sample": False}
    )
    settings = {"loop": ev, "generate": ev, "issue": OmegaConf.merge(ev, ISSUE_TIME)}
    max_new_tokens = resolve_max_new_tokens(ev, tokenizer, references)

    steps = {"loop": 0, "generate": 0, "issue": 0}  # decoded row-steps, in the last round
    current = {"variant": "generate"}
    real_loop, real_generate = generation.greedy_ids, generation.generate_ids

    def counted_loop(*args: object, **kwargs: object) -> list[list[int]]:
        rows = real_loop(*args, **kwargs)
        steps["loop"] += sum(len(r) for r in rows)
        return rows

    def counted_generate(*args: object, **kwargs: object) -> object:
        new = real_generate(*args, **kwargs)
        steps[current["variant"]] += int(new.shape[0] * new.shape[1])
        return new

    generation.greedy_ids, generation.generate_ids = counted_loop, counted_generate
    generate(net, tokenizer, prompts[:2], ev, references=references)  # warm up
    times = {s: {v: [] for v in VARIANTS} for s in sides}
    cpu_times = {s: {v: [] for v in VARIANTS} for s in sides}
    answers: dict[str, dict[str, list[str]]] = {s: {} for s in sides}
    try:
        for r in range(repeat):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            steps.update(loop=0, generate=0, issue=0)
            for side, context in sides.items():
                with context():
                    for variant in order:
                        current["variant"] = variant
                        t0, c0 = time.perf_counter(), time.process_time()
                        out = generate(
                            net, tokenizer, prompts, settings[variant], references=references,
                            loop=VARIANTS[variant],
                        )  # fmt: skip
                        took = time.perf_counter() - t0
                        times[side][variant].append(took)
                        cpu_times[side][variant].append(time.process_time() - c0)
                        answers[side].setdefault(variant, out)
                        print(
                            f"  {side:5s} {variant:8s} {took:7.2f} s "
                            f"(CPU {cpu_times[side][variant][-1]:.2f} s)",
                            flush=True,
                        )
    finally:
        generation.greedy_ids, generation.generate_ids = real_loop, real_generate

    per_side = {}
    for side in sides:
        a = answers[side]
        per_side[side] = {
            "loop_s": statistics.median(times[side]["loop"]),
            "generate_s": statistics.median(times[side]["generate"]),
            "issue_s": statistics.median(times[side]["issue"]),
            # greedy: of two answers cut at different max_new_tokens, one starts the other
            "issue_prefix": sum(
                y.startswith(x) or x.startswith(y)
                for x, y in zip(a["loop"], a["issue"], strict=True)
            ),
            "loop_cpu_s": statistics.median(cpu_times[side]["loop"]),
            "generate_cpu_s": statistics.median(cpu_times[side]["generate"]),
            "identical": sum(x == y for x, y in zip(a["loop"], a["generate"], strict=True)),
            "answer_tokens": sum(
                len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in a["loop"]
            ),
        }
    loop_s = sum(s["loop_s"] for s in per_side.values())
    generate_s = sum(s["generate_s"] for s in per_side.values())
    cpu_ratio = sum(s["loop_cpu_s"] for s in per_side.values()) / sum(
        s["generate_cpu_s"] for s in per_side.values()
    )
    identical = sum(s["identical"] for s in per_side.values())
    answers_n = len(prompts) * len(sides)
    ratio = loop_s / generate_s
    issue_s = sum(s["issue_s"] for s in per_side.values())
    issue_ratio = loop_s / issue_s
    return {
        "model": model,
        "machine": cpu,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "prompts": len(prompts),
        "sides": per_side,
        "answers": answers_n,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "loop_s": loop_s,
        "generate_s": generate_s,
        "ratio": ratio,
        "issue_s": issue_s,
        "issue_ratio": issue_ratio,
        "issue_prefix": sum(s["issue_prefix"] for s in per_side.values()),
        "cpu_ratio": cpu_ratio,
        "row_steps": dict(steps),
        "identical": identical,
        "met": issue_ratio <= TARGET and identical == answers_n,
        "times": times,
        "cpu_times": cpu_times,
    }


def print_report(r: dict) -> None:
    sides = ", ".join(
        f"{k} {s['loop_s']:.1f} s vs {s['generate_s']:.1f} s ({s['identical']}/{r['prompts']} "
        "identical)"
        for k, s in r["sides"].items()
    )
    print(
        f"{r['model']} on {describe(r['machine'])}, load {r['load_average'][0]:.2f}: "
        f"{r['prompts']} test prompts x {len(r['sides'])} sides, greedy, batches of "
        f"{r['batch_size']}, max_new_tokens={r['max_new_tokens']}: loop {r['loop_s']:.1f} s, "
        f"model.generate {r['generate_s']:.1f} s -> {r['ratio']:.2f}x the time "
        f"({r['cpu_ratio']:.2f}x the CPU time); {sides}; decoded row-steps "
        f"{r['row_steps']['loop']} vs {r['row_steps']['generate']}; identical answers "
        f"{r['identical']}/{r['answers']}"
    )
    print(
        f"against evaluation when issue 16 was filed (model.generate, batches of 16, "
        f"max_new_tokens=64): {r['issue_s']:.1f} s -> today {r['issue_ratio']:.2f}x the time "
        f"(target <= {TARGET}x); the two answers are equal or one starts the other: "
        f"{r['issue_prefix']}/{r['answers']}  {'met' if r['met'] else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "workload"])
    parser.add_argument("--samples", type=int, help="the first N test prompts (default: all)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--batch-size", type=int, default=64, help="generation batch (evaluator default: 64)"
    )
    parser.add_argument("--run", type=Path, help="a finished demo run (smollm2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = args.model or ("smollm2" if smollm2_cached() else "workload")
    result = run(model, args.samples, args.repeat, args.batch_size, args.run)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

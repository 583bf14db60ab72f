"""Evaluation benchmark: batched generation against one prompt at a time, same greedy answers.

Generates greedy answers for the prompts of a test split through tunesmith's own
``framework.model.generation.generate`` twice: with ``evaluator.batch_size`` (16, the default) and
with ``evaluator.batch_size=1``. The two alternate ``--repeat`` times; the figures are
medians. The answers of both must be identical.

* ``--model smollm2`` (the default when its converted checkpoint is in the cache): the real
  SmolLM2-135M-Instruct on the test split of the demo data;
* ``--model workload``: the benchmark workload's random Llama on its test split (every
  answer runs to ``max_new_tokens``).

Run: ``python benchmarks/bench_eval.py --model smollm2 --samples 32``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.workload import build  # noqa: E402

TARGET = 4.0


def _prepared_test(overrides: list[str], run_dir: Path) -> Path:
    """The test split written by tunesmith's prepare stage (run once, then reused)."""
    path = run_dir / "data" / "test.jsonl"
    if not path.is_file():
        cmd = [sys.executable, "run.py", "stages=[prepare]", *overrides, f"hydra.run.dir={run_dir}"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-4000:])
    return path


def setup(model: str) -> tuple[list[str], object]:
    """``(overrides, test-split path)`` for ``model``."""
    if model == "workload":
        work = build()
        overrides = [
            "data=alpaca",
            f"data.path={work.records}",
            "model=hf",
            f"model.path={work.model}",
        ]
        return overrides, _prepared_test(overrides, work.dir / "prepared-eval")
    overrides = ["data=demo", "model=smollm2"]
    cache = Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))
    return overrides, _prepared_test(overrides, cache / "bench" / "smollm2-demo")


def smollm2_cached() -> bool:
    cache = Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))
    return (cache / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file()


def run(model: str = "smollm2", samples: int = 32, repeat: int = 2, batch_size: int = 16) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from framework.cli import CONFIG_DIR
    from framework.data.chat import prompt_of, reference_of
    from framework.manager import build_plugin_manager
    from framework.model.generation import generate, prompt_text, resolve_max_new_tokens
    from framework.resolvers import register_resolvers
    from framework.run import read_jsonl

    overrides, test_path = setup(model)
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.run_dir = str(Path(test_path).parent.parent)
    plugins = build_plugin_manager()
    net, tokenizer = plugins.hook.tunesmith_build_model(name=str(cfg.model.name), cfg=cfg)
    examples = read_jsonl(Path(test_path))[:samples]
    prompts = [prompt_text(tokenizer, prompt_of(e)) for e in examples]
    # as the evaluate stage does: evaluator.max_new_tokens null sizes answers from the references
    references = [reference_of(e) for e in examples]
    max_new_tokens = resolve_max_new_tokens(cfg.evaluator, tokenizer, references)

    def timed(bs: int) -> tuple[float, list[str]]:
        ev = cfg.evaluator.copy()
        with open_dict(ev):
            ev.batch_size = bs
        t0 = time.perf_counter()
        out = generate(net, tokenizer, prompts, ev, references=references)
        return time.perf_counter() - t0, out

    torch.manual_seed(0)
    generate(net, tokenizer, prompts[:2], cfg.evaluator, references=references)  # warm up
    times: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    answers: dict[str, list[str]] = {}
    for _ in range(repeat):
        for name, bs in (("batched", batch_size), ("one_at_a_time", 1)):
            t, out = timed(bs)
            times[name].append(t)
            answers.setdefault(name, out)
            print(f"  {name:14s} {t:7.2f} s", flush=True)
    batched, single = (statistics.median(times[k]) for k in ("batched", "one_at_a_time"))
    same = sum(a == b for a, b in zip(answers["batched"], answers["one_at_a_time"], strict=True))
    new_tokens = sum(
        len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers["batched"]
    )
    return {
        "model": model,
        "prompts": len(prompts),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "answer_tokens": new_tokens,
        "batched_s": batched,
        "one_at_a_time_s": single,
        "speedup": single / batched,
        "identical": same,
        "met": single / batched >= TARGET and same == len(prompts),
        "times": times,
    }


def print_report(r: dict) -> None:
    print(
        f"{r['model']}: {r['prompts']} test prompts, greedy, max_new_tokens={r['max_new_tokens']}: "
        f"batched ({r['batch_size']}) {r['batched_s']:.1f} s, one at a time "
        f"{r['one_at_a_time_s']:.1f} s -> {r['speedup']:.2f}x (target >= {TARGET}x); "
        f"identical answers {r['identical']}/{r['prompts']}  {'met' if r['met'] else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "workload"])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = args.model or ("smollm2" if smollm2_cached() else "workload")
    result = run(model, args.samples, args.repeat)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

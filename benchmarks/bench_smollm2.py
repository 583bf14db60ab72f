"""SmolLM2-135M LoRA training in fp32 on the CPU: achieved FLOP/s against the matmul peak of
the same run, and tokens/s against the hand-written loop on SmolLM2 itself.

Every run is a fresh process, alternating (plain, tunesmith, compiled, plain, ...); figures
are medians. ``tunesmith`` is today's default (the issue-16 baseline: eager PyTorch, logits
only on answer tokens); ``compiled`` adds ``model.compile=true`` (``torch.compile`` of the
decoder layers, opt-in): its ratio to ``tunesmith`` is the "x today's tokens/s" figure.
Tokens/s are given twice: from the end of step 1 to the last step (what a short run gets),
and over the second half of the steps ("late": steady state, compilation done).
Both train SmolLM2-135M-Instruct (the converted checkpoint in the tunesmith cache) on the demo
data's train split in tunesmith's order, LoRA r=8/alpha=16 on q_proj,v_proj, batch 8, padded
to the longest of each batch (``data.packing=false``), AdamW lr 1e-4, fp32 (``32-true``).

**The matmul peak** is measured in this process, before and after the runs: a 2048 x 2048 by
2048 x 2048 fp32 ``torch.mm`` (2 * 2048**3 FLOPs), best of 20, with the thread count the
training runs use.

**FLOPs per trained token** (an estimate, stated so it can be checked)::

    FLOPs/token = 2 * N_mm            forward: every matmul weight once per token
                + 2 * N_mm            backward to the activations (through frozen weights too)
                + 2 * N_trainable     backward to the trainable weights (LoRA A and B) only

``N_mm`` is the number of weights used in a matmul per token: every linear layer of the 30
blocks plus the LM head (tied to the embedding, so counted once as the head; the embedding
lookup itself is no matmul). Attention scores (``4 * layers * seq * d_model`` per token, ~4%
at this length) and the element-wise work are left out, and the LM head is counted on every
token although tunesmith computes logits only where there is a label: the figure is a
slight underestimate of the work for the plain loop and an overestimate for tunesmith's
answer-only loss. Achieved FLOP/s = non-pad tokens/s x FLOPs/token.

Run: ``python benchmarks/bench_smollm2.py --rounds 3 --steps 20`` (``--threads 1`` on a
busy machine). ``--interleaved --steps 12`` runs plain, today and compiled in ONE process,
step by step in turn (see :func:`interleaved`): the ratios that hold on a shared machine. The model must be converted already (run ``python run.py`` once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import CHILD_ENV, _run  # noqa: E402

STEPS = 20
LORA = ["method=lora", "method.r=8", "method.lora_alpha=16", "method.lora_dropout=0.0"]


def model_dir() -> Path:
    cache = Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))
    return cache / "models" / "SmolLM2-135M-Instruct"


def cpu_description() -> dict[str, object]:
    """The CPU model and the flags that decide fp32/bf16 speed (from /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "flags": {f: f in flags for f in wanted},
    }


def describe(cpu: dict) -> str:
    have = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    return f"{cpu['cpu']} ({cpu['cores']} cores; {have})"


def matmul_peak(threads: int | None, size: int = 2048, repeat: int = 20) -> float:
    """FLOP/s of the best of ``repeat`` fp32 ``size``x``size`` matmuls."""
    import time

    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def flops_per_token() -> dict[str, float]:
    """``N_mm``, ``N_trainable`` and FLOPs per token of the benchmarked model (see above)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir())
    d, inter, layers, vocab = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = d // c.num_attention_heads * c.num_key_value_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inter  # q,o + k,v + gate,up,down
    n_mm = layers * per_layer + vocab * d
    r = 8
    n_trainable = layers * (r * (d + d) + r * (d + kv))  # LoRA A+B on q_proj and v_proj
    return {
        "n_mm": n_mm,
        "n_trainable": n_trainable,
        "flops_per_token": 4 * n_mm + 2 * n_trainable,
    }


def overrides(steps: int) -> list[str]:
    return [
        "stages=[prepare,train]",
        "data=demo",
        "data.packing=false",
        "data.group_by_length=false",
        "data.batch_size=8",
        "model=smollm2",
        "model.dtype=float32",
        *LORA,
        "method.target_modules=[q_proj,v_proj]",
        "optim.lr=1e-4",
        "optim.scheduler=constant",
        "optim.warmup_ratio=0.0",
        "optim.weight_decay=0.0",
        "trainer.precision=32-true",
        "trainer.gradient_clip_val=1.0",
        f"trainer.max_steps={steps}",
        "seed=42",
    ]


def prepared(workdir: Path) -> Path:
    """The demo's train split in tunesmith's order (prepared once)."""
    import subprocess

    run_dir = Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))
    run_dir = run_dir / "bench" / "smollm2-train"
    path = run_dir / "data" / "train.jsonl"
    if not path.is_file():
        cmd = [sys.executable, "run.py", *overrides(STEPS), "stages=[prepare]"]
        proc = subprocess.run(
            [*cmd, f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-4000:])
    return path


def run_plain(examples: Path, out: Path, steps: int) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "plain_loop.py"),
        "--model",
        str(model_dir()),
        "--examples",
        str(examples),
        "--steps",
        str(steps),
        "--max-length",
        "256",
        "--out",
        str(out),
    ]
    return _run(cmd, out)


def run_tunesmith(out: Path, run_dir: Path, steps: int, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "run.py",
        *overrides(steps),
        *extra,
        f"hydra.run.dir={run_dir}",
        "+callbacks.bench_probe._target_=benchmarks.probe.BenchProbe",
        f"+callbacks.bench_probe.out={out}",
        "+callbacks.bench_probe.name=tunesmith",
    ]
    return _run(cmd, out)


def run(rounds: int, steps: int, threads: int | None, variants: dict[str, list[str]]) -> dict:
    if not (model_dir() / "config.json").is_file():
        raise SystemExit("SmolLM2 is not converted yet: run `python run.py` once.")
    cpu = cpu_description()
    print(f"CPU: {describe(cpu)}", flush=True)
    peaks = [matmul_peak(threads)]
    examples = prepared(ROOT)
    results: dict[str, list[dict]] = {"plain": [], **{k: [] for k in variants}}
    with tempfile.TemporaryDirectory(prefix="tunesmith-smollm2-") as tmp_name:
        tmp = Path(tmp_name)
        for i in range(rounds):
            for name in results:
                d = tmp / f"{i}-{name}"
                d.mkdir()
                if name == "plain":
                    r = run_plain(examples, d / "r.json", steps)
                else:
                    r = run_tunesmith(d / "r.json", d / "run", steps, variants[name])
                results[name].append(r)
                print(
                    f"  round {i + 1}/{rounds} {name:10s} {r['tokens_per_s']:7.0f} tok/s "
                    f"(late {r.get('late_tokens_per_s') or 0:7.0f})  "
                    f"1st step at {r['time_to_first_step_s']:6.1f} s  "
                    f"loss@1 {r['first_loss']:.6f} last {r['last_loss']:.6f}  "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    peaks.append(matmul_peak(threads))
    per_token = flops_per_token()
    peak = max(peaks)
    summary = {}
    for name, runs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        achieved = tps * per_token["flops_per_token"]
        late = [r["late_tokens_per_s"] for r in runs if r.get("late_tokens_per_s")]
        summary[name] = {
            "tokens_per_s": tps,
            "late_tokens_per_s": statistics.median(late) if late else None,
            "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in runs),
            "time_to_first_step_s": statistics.median(r["time_to_first_step_s"] for r in runs),
            "first_loss": statistics.median(r["first_loss"] for r in runs),
            "last_loss": statistics.median(r["last_loss"] for r in runs),
            "achieved_gflops": achieved / 1e9,
            "share_of_peak": achieved / peak,
            "late_share_of_peak": (
                statistics.median(late) * per_token["flops_per_token"] / peak if late else None
            ),
        }
    return {
        "machine": cpu,
        "load_average": os.getloadavg(),
        "threads": threads,
        "steps": steps,
        "rounds": rounds,
        "matmul_peak_gflops": [p / 1e9 for p in peaks],
        "flops": per_token,
        "summary": summary,
        "runs": results,
    }


def interleaved(steps: int, threads: int | None, batch_size: int = 8) -> dict:
    """Plain loss, today's eager tunesmith loss and ``model.compile`` in ONE process, step by
    step in turn (rotating the order), on the same batches from the same initial weights.

    Load from other processes then falls on all three alike, which makes the ratios hold on a
    shared machine where separate runs minutes apart do not. Each variant is what the
    training step computes: forward, loss, backward, clipping at 1.0, AdamW. ``plain`` takes
    ``model(**batch).loss`` (logits everywhere), ``today`` tunesmith's
    :func:`framework.train.losses.causal_lm_loss` (logits on labelled positions only),
    ``compiled`` the same after :func:`framework.train.module.compile_blocks`. Its first two
    steps (compilation, and recompilation for dynamic shapes) are timed apart.
    """
    import time

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from framework.train.losses import causal_lm_loss
    from framework.train.module import compile_blocks

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir())
    rows = []
    for line in prepared(ROOT).read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        text = tok.apply_chat_template(messages, tokenize=False)
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"][:256]
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        rows.append((ids, [-100] * min(n, len(ids)) + ids[n:]))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(42)).tolist()
    batches = []
    for i in range(steps):
        chunk = [rows[j] for j in order[i * batch_size : (i + 1) * batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        b = {
            "input_ids": torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(chunk), width), dtype=torch.long),
            "labels": torch.full((len(chunk), width), -100, dtype=torch.long),
        }
        for k, (ids, labels) in enumerate(chunk):
            b["input_ids"][k, : len(ids)] = torch.tensor(ids)
            b["attention_mask"][k, : len(ids)] = 1
            b["labels"][k, : len(ids)] = torch.tensor(labels)
        batches.append(b)

    def build() -> tuple:
        torch.manual_seed(42)
        model = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=torch.float32)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(model, lora)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        return model, params, torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    variants = {name: build() for name in ("plain", "today", "compiled")}
    compile_blocks(variants["compiled"][0])
    stats = {n: {"wall": 0.0, "cpu": 0.0, "tokens": 0, "losses": []} for n in variants}
    warm: dict[str, float] = {}
    names = list(variants)
    for i, batch in enumerate(batches):
        for name in names[i % 3 :] + names[: i % 3]:
            model, params, opt = variants[name]
            t, c = time.perf_counter(), time.process_time()
            loss = model(**batch).loss if name == "plain" else causal_lm_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            st = stats[name]
            st["losses"].append(float(loss))
            if i < 2:  # compilation and the dynamic-shape recompilation: timed apart
                warm[name] = warm.get(name, 0.0) + wall
                continue
            st["wall"] += wall
            st["cpu"] += cpu
            st["tokens"] += int(batch["attention_mask"].sum())
        print(
            f"  step {i + 1}/{steps} "
            + "  ".join(f"{n} {stats[n]['losses'][-1]:.6f}" for n in names)
            + f"  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    return {
        n: {
            "tokens_per_s": st["tokens"] / max(st["wall"], 1e-9),
            "tokens_per_cpu_s": st["tokens"] / max(st["cpu"], 1e-9),
            "first_two_steps_s": warm[n],
            "losses": st["losses"],
        }
        for n, st in stats.items()
    }


def print_interleaved(r: dict) -> None:
    plain, today = r["plain"], r["today"]
    print("\nIn one process, interleaved (steps 3 on; the first two timed apart):")
    for name, s in r.items():
        print(
            f"{name:9s} {s['tokens_per_s']:7.0f} tok/s ({s['tokens_per_s'] / plain['tokens_per_s']:.2f}x"
            f" plain, {s['tokens_per_s'] / today['tokens_per_s']:.2f}x today)  "
            f"{s['tokens_per_cpu_s']:7.0f} tok/CPU-s "
            f"({s['tokens_per_cpu_s'] / today['tokens_per_cpu_s']:.2f}x today)  "
            f"first two steps {s['first_two_steps_s']:6.1f} s  loss@1 {s['losses'][0]:.6f} "
            f"last {s['losses'][-1]:.6f}"
        )


def print_report(r: dict) -> None:
    print(f"\nCPU: {describe(r['machine'])}; threads: {r['threads'] or 'torch default'}")
    peaks = ", ".join(f"{p:.1f}" for p in r["matmul_peak_gflops"])
    print(f"2048^2 fp32 matmul peak (before, after): {peaks} GFLOP/s")
    f = r["flops"]
    print(
        f"FLOPs/token = 4 x {f['n_mm'] / 1e6:.1f}M + 2 x {f['n_trainable'] / 1e6:.2f}M = "
        f"{f['flops_per_token'] / 1e6:.0f} MFLOP"
    )
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in r['load_average'])}")
    summary = r["summary"]
    plain, today = summary["plain"], summary.get("tunesmith", summary["plain"])

    def ratio(s: dict, base: dict, key: str) -> str:
        return f"{s[key] / base[key]:.2f}x" if s.get(key) and base.get(key) else "-"

    for name, s in summary.items():
        late = s.get("late_tokens_per_s") or 0
        print(
            f"{name:10s} {s['tokens_per_s']:7.0f} tok/s ({ratio(s, plain, 'tokens_per_s')} "
            f"plain, {ratio(s, today, 'tokens_per_s')} today)  late {late:7.0f} tok/s "
            f"({ratio(s, plain, 'late_tokens_per_s')} plain, "
            f"{ratio(s, today, 'late_tokens_per_s')} today)  "
            f"{s['achieved_gflops']:6.1f} GFLOP/s = {100 * s['share_of_peak']:.0f}% of the "
            f"matmul peak (late {100 * (s.get('late_share_of_peak') or 0):.0f}%)  1st step at {s['time_to_first_step_s']:.1f} s  "
            f"loss@1 {s['first_loss']:.6f}  last {s['last_loss']:.6f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, help="torch threads of every run")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="a tunesmith variant NAME=override,override (e.g. grouped=data.group_by_length=true)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="only the in-process comparison, step by step in turn (steady on a busy machine)",
    )
    args = parser.parse_args()
    if args.interleaved:
        print(f"CPU: {describe(cpu_description())}", flush=True)
        peak = matmul_peak(args.threads)
        result = interleaved(args.steps, args.threads)
        per_token = flops_per_token()["flops_per_token"]
        print_interleaved(result)
        for name, s in result.items():
            share = s["tokens_per_s"] * per_token / peak
            print(
                f"{name:9s} {s['tokens_per_s'] * per_token / 1e9:6.1f} GFLOP/s = "
                f"{100 * share:.0f}% of the {peak / 1e9:.1f} GFLOP/s matmul peak"
            )
        print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return
    if args.threads:
        CHILD_ENV.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    variants: dict[str, list[str]] = {"tunesmith": [], "compiled": ["model.compile=true"]}
    for item in args.extra:
        name, _, rest = item.partition("=")
        variants[name] = [o for o in rest.split(",") if o]
    report = run(args.rounds, args.steps, args.threads, variants)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

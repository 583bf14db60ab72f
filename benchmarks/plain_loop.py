"""The reference: the PyTorch + PEFT training loop a user would write by hand.

It trains the benchmark workload exactly as tunesmith's "same" configuration does (same
examples in the same order, padding to the longest in each batch, LoRA r=8/alpha=16 on
q_proj and v_proj, AdamW lr 1e-4 constant, gradient clipping at 1.0, fp32) and writes its
figures to a JSON file. It imports nothing from tunesmith.

Run by ``benchmarks/bench_train.py`` in a subprocess of its own::

    python benchmarks/plain_loop.py --model DIR --examples train.jsonl --steps 60 --out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

T_START = float(os.environ.get("BENCH_T0", time.time()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--examples", required=True, help="JSONL of {'messages': [...]}")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    with open(args.examples, encoding="utf-8") as f:
        conversations = [json.loads(line)["messages"] for line in f if line.strip()]

    # Tokenise: the whole conversation, and the prompt (everything before the answer) to mask.
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in conversations]
    prompts = [
        tokenizer.apply_chat_template(m[:-1], tokenize=False, add_generation_prompt=True)
        for m in conversations
    ]
    full = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=args.max_length)
    prompt_lens = [len(p) for p in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    dataset = []
    for ids, n_prompt in zip(full["input_ids"], prompt_lens, strict=True):
        labels = [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]
        if any(label != -100 for label in labels):
            dataset.append((ids, labels))

    pad = tokenizer.pad_token_id

    def collate(rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(lab)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    # The first epoch's order, a seeded permutation: what tunesmith's sampler draws for epoch 0
    # (a DataLoader's shuffle=True derives its own seed from the generator: other batches).
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=order.tolist(),
        collate_fn=collate,
    )

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    losses: list[float] = []
    tokens: list[int] = []
    t_first = t_last = c_first = c_last = 0.0
    step = 0
    marks: list[float] = []  # wall time at the end of each step
    while step < args.steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens.append(int(batch["attention_mask"].sum()))
            marks.append(time.time())
            if step == 1:
                t_first, c_first = time.time(), time.process_time()
                losses.append(float(loss))
            if step == args.steps:
                t_last, c_last = time.time(), time.process_time()
                losses.append(float(loss))
                break

    steady_tokens = sum(tokens[1:])
    result = {
        "name": "plain",
        "steps": step,
        "time_to_first_step_s": t_first - T_START,
        "train_s": t_last - t_first,
        "tokens": sum(tokens),
        "steady_tokens": steady_tokens,
        "tokens_per_s": steady_tokens / max(t_last - t_first, 1e-9),
        "cpu_to_first_step_s": c_first,
        "tokens_per_cpu_s": steady_tokens / max(c_last - c_first, 1e-9),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        # tokens/s over the second half of the steps (as benchmarks/probe.py records it)
        "late_tokens_per_s": (
            sum(tokens[len(tokens) // 2 : step]) / max(marks[-1] - marks[len(marks) // 2 - 1], 1e-9)
            if step >= 4
            else None
        ),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

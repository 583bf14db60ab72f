"""The fixed benchmark workload of issue 8, built locally and cached.

* 2,000 alpaca-style records of varied length (median ~57 tokens after the chat template,
  longest ~270, truncated at 256 in training), made from a seeded random word generator;
* a byte-level BPE tokenizer (~3.8k tokens) trained on those records, with a ChatML template;
* a randomly initialised Llama: hidden 256, 4 layers, 4 heads, intermediate 688 (~5.1M
  parameters), saved as a Hugging Face folder so both tunesmith (``model=hf``) and the plain
  loop load the very same weights.

Run ``python benchmarks/workload.py`` to build it and print its statistics.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Where built workloads are cached (ignored by git).
CACHE_DIR = Path(__file__).resolve().parent / ".cache"


@dataclass(frozen=True)
class WorkloadSpec:
    """The knobs of the workload; its hash names the cache folder."""

    records: int = 2000
    seed: int = 42
    vocab_size: int = 3800
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 688
    max_length: int = 256
    #: log-normal length of a record in words (median, sigma), before the template.
    words_median: float = 30.0
    words_sigma: float = 0.62
    max_words: int = 180

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


@dataclass(frozen=True)
class Workload:
    """Paths of a built workload."""

    dir: Path
    spec: WorkloadSpec

    @property
    def records(self) -> Path:
        return self.dir / "records.jsonl"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def stats(self) -> Path:
        return self.dir / "stats.json"


_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v"]
_ONSETS += ["w", "z", "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "ie"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck"]
_VERBS = ["Explain", "Describe", "Summarize", "List", "Write", "Give", "Rewrite", "Classify"]


def _lexicon(rng: random.Random, size: int = 3000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        n = rng.choice((1, 1, 1, 2, 2, 3))
        words.add(
            "".join(
                rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(n)
            )
        )
    return sorted(words)


def _sentence(rng: random.Random, lexicon: list[str], weights: list[float], n: int) -> str:
    words = rng.choices(lexicon, weights=weights, k=max(n, 1))
    out, since = [], 0
    for w in words:
        since += 1
        out.append(w)
        if since > rng.randint(6, 14):
            out[-1] += rng.choice((".", ".", ",", "?", ";"))
            since = 0
    text = " ".join(out)
    return text[0].upper() + text[1:] + ("" if text[-1] in ".?" else ".")


def make_records(spec: WorkloadSpec) -> list[dict[str, str]]:
    """``spec.records`` alpaca records with log-normally distributed lengths (seeded)."""
    rng = random.Random(spec.seed)
    lexicon = _lexicon(rng)
    weights = [1.0 / (rank + 10) for rank in range(len(lexicon))]  # Zipf-like word use
    records = []
    for _ in range(spec.records):
        total = rng.lognormvariate(math.log(spec.words_median), spec.words_sigma)
        total = max(6, min(int(total), spec.max_words))
        n_instr = max(3, min(total // 4, rng.randint(4, 14)))
        n_input = rng.randint(0, (total - n_instr) // 2) if rng.random() < 0.5 else 0
        n_output = max(2, total - n_instr - n_input)
        instruction = rng.choice(_VERBS) + " " + _sentence(rng, lexicon, weights, n_instr)
        records.append(
            {
                "instruction": instruction,
                "input": _sentence(rng, lexicon, weights, n_input) if n_input else "",
                "output": _sentence(rng, lexicon, weights, n_output),
            }
        )
    return records


def build_tokenizer(records: list[dict[str, str]], vocab_size: int):  # noqa: ANN201
    """A byte-level BPE tokenizer trained on ``records``, with ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from framework.data.chat import FALLBACK_CHAT_TEMPLATE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(r.values()) for r in records] + ["system user assistant"] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = FALLBACK_CHAT_TEMPLATE
    return fast


def _token_lengths(records: list[dict[str, str]], tokenizer) -> list[int]:  # noqa: ANN001
    texts = []
    for r in records:
        prompt = f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"]
        texts.append(
            tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": r["output"]},
                ],
                tokenize=False,
            )
        )
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def build(spec: WorkloadSpec | None = None, cache_dir: Path = CACHE_DIR) -> Workload:
    """Build (or reuse) the workload described by ``spec``; returns its paths."""
    spec = spec or WorkloadSpec()
    work = Workload(cache_dir / f"workload-{spec.key}", spec)
    if work.stats.is_file() and (work.model / "config.json").is_file():
        return work
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    work.dir.mkdir(parents=True, exist_ok=True)
    records = make_records(spec)
    with work.records.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    tokenizer = build_tokenizer(records, spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(work.model, safe_serialization=True)
    tokenizer.save_pretrained(work.model)
    lengths = _token_lengths(records, tokenizer)
    capped = [min(n, spec.max_length) for n in lengths]
    stats = {
        "records": len(records),
        "vocab": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_median": statistics.median(lengths),
        "tokens_mean": round(statistics.fmean(lengths), 1),
        "tokens_max": max(lengths),
        "truncated": sum(n > spec.max_length for n in lengths),
        "padding_share_batch8": round(_padding_share(capped, 8, spec.seed), 3),
    }
    work.stats.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return work


def _padding_share(lengths: list[int], batch: int, seed: int) -> float:
    """Share of pad tokens when random batches of ``batch`` are padded to their longest."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    real = padded = 0
    for i in range(0, len(order), batch):
        chunk = [lengths[j] for j in order[i : i + batch]]
        real += sum(chunk)
        padded += max(chunk) * len(chunk)
    return 1 - real / padded


def main() -> None:
    work = build()
    print(f"workload in {work.dir}")
    print(work.stats.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

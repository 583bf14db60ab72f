"""``model=tiny``: a tiny randomly initialised Llama with a tokenizer built locally.

For tests and smoke runs: it builds in about a second, needs no download, and is cached
under ``paths.cache_dir`` keyed by its config, so every load gives the same weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import ModelSource, hookimpl
from framework.data.chat import FALLBACK_CHAT_TEMPLATE
from framework.model.loading import load_pretrained
from framework.pipeline import to_container
from framework.run import atomic_path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small bilingual corpus so common words get merged; byte-level BPE covers any other text.
_CORPUS = [
    "Extract the contact as JSON. The name, age and city of the person.",
    "My name is Alice, I am 31 years old and I live in Paris.",
    '{"name": "Bob", "age": 42, "city": "London"}',
    "Answer the question. What is the capital of France? The capital of France is Paris.",
    "Translate to English. Summarize the text. Classify the sentiment: positive, negative.",
    "把这段话里的联系人信息提取成JSON。我叫李明，今年28岁，住在上海。",
    "你好，世界。请回答问题。北京 上海 广州 深圳 杭州 成都",
    "system user assistant You are a helpful assistant.",
    "0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100",
]


@hookimpl
def tunesmith_provides() -> list[ModelSource]:
    return [
        ModelSource(
            "tiny", description="a tiny random Llama built locally, for tests and smoke runs"
        )
    ]


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on a fixed corpus, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = FALLBACK_CHAT_TEMPLATE
    return fast


def build(target: Path, spec: dict[str, Any]) -> Path:
    """Write a tiny Llama checkpoint and its tokenizer to ``target``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(int(spec["vocab_size"]))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(spec["hidden_size"]),
        intermediate_size=int(spec["intermediate_size"]),
        num_hidden_layers=int(spec["num_hidden_layers"]),
        num_attention_heads=int(spec["num_attention_heads"]),
        num_key_value_heads=int(spec["num_key_value_heads"]),
        max_position_embeddings=int(spec["max_position_embeddings"]),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(int(spec.get("init_seed", 0)))
    model = LlamaForCausalLM(config)
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


@hookimpl
def tunesmith_build_model(name: str, cfg: DictConfig) -> tuple[Any, Any] | None:
    if name != "tiny":
        return None
    spec = to_container(cfg.model.get("architecture"))
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(str(cfg.paths.cache_dir)).expanduser() / "models" / f"tiny-{key}"
    if not (target / "config.json").is_file():
        build(target, spec)
    return load_pretrained(target, cfg)

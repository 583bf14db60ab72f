"""Packing keeps examples apart and the loss unchanged; length grouping is a fair shuffle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framework.data.chat import IGNORE_INDEX
from framework.data.datamodule import Collator, FineTuneDataModule
from framework.data.packing import LengthGroupedSampler, check_packing_isolation, pack_rows
from framework.errors import ConfigError
from framework.train.losses import causal_lm_loss

LENGTHS = [30, 120, 57, 12, 90, 45, 60, 7]


def _model(attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


def _examples(lengths=LENGTHS, train_on_prompt: bool = False) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in lengths:
        ids = torch.randint(3, 97, (n,), generator=g).tolist()
        labels = list(ids) if train_on_prompt else [IGNORE_INDEX] * (n // 3) + ids[n // 3 :]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _spans(batch: dict[str, torch.Tensor]) -> list[tuple[int, int, int]]:
    """``(row, start, end)`` of every example in a packed batch, from its position ids."""
    spans = []
    for r, pos in enumerate(batch["position_ids"].tolist()):
        starts = [t for t, p in enumerate(pos) if p == 0] + [len(pos)]
        spans += [(r, s, e) for s, e in zip(starts, starts[1:], strict=False)]
    return spans


def test_pack_rows_places_every_example_once_within_the_budget() -> None:
    rows = pack_rows(LENGTHS, budget=128)
    assert sorted(i for row in rows for i in row) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in row) <= 128 for row in rows)
    assert len(rows) == 4  # 421 tokens in rows of 128
    assert pack_rows(LENGTHS, budget=128) == rows  # deterministic
    assert pack_rows([300, 5], budget=128) == [[0], [1]]  # too long: a row of its own


def test_packed_batch_has_no_attention_mask_and_counts_real_tokens() -> None:
    examples = _examples()
    packed = Collator(0, packing=True, pack_length=128)(examples)
    padded = Collator(0)(examples)
    assert "attention_mask" not in packed and "position_ids" in packed
    assert int(packed["num_tokens"]) == int(padded["num_tokens"]) == sum(LENGTHS)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    # every example appears whole and once, with positions 0..n-1 (pad id 0 ends a row)
    found = []
    for r, s, e in _spans(packed):
        ids = packed["input_ids"][r, s:e].tolist()
        while ids and ids[-1] == 0:
            ids.pop()
        assert packed["position_ids"][r, s : s + len(ids)].tolist() == list(range(len(ids)))
        found.append(ids)
    assert sorted(found) == sorted(ex["input_ids"] for ex in examples)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_example_sees_only_itself(attn: str) -> None:
    model = _model(attn)
    examples = _examples()
    packed = Collator(0, packing=True, pack_length=128)(examples)
    with torch.no_grad():
        logits = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
        for ex in examples:
            alone = model(input_ids=torch.tensor([ex["input_ids"]]), use_cache=False).logits[0]
            n = len(ex["input_ids"])
            ids = packed["input_ids"]
            hits = [
                (r, s)
                for r, s, e in _spans(packed)
                if e - s >= n and ids[r, s : s + n].tolist() == ex["input_ids"]
            ]
            assert hits, "example missing from the packed batch"
            r, s = hits[0]
            torch.testing.assert_close(logits[r, s : s + n], alone, atol=1e-4, rtol=1e-4)


def test_packing_never_makes_one_example_the_target_of_another() -> None:
    examples = _examples(train_on_prompt=True)  # every token labelled: the hardest case
    packed = Collator(0, packing=True, pack_length=128)(examples)
    targets = packed["labels"][:, 1:]
    pos = packed["position_ids"]
    # a labelled target must continue the same example as the token that predicts it
    continues = pos[:, 1:] == pos[:, :-1] + 1
    assert bool((continues | (targets == IGNORE_INDEX)).all())
    # and the example starts carry no label, so nothing is learned across a boundary
    for r, s, _ in _spans(packed):
        assert int(packed["labels"][r, s]) == IGNORE_INDEX
    # the labelled tokens are exactly those of the unpacked batch
    padded = Collator(0)(examples)
    assert int((targets != IGNORE_INDEX).sum()) == int((padded["labels"][:, 1:] != -100).sum())


@pytest.mark.parametrize("lora", [False, True])
def test_packed_loss_equals_padded_loss(lora: bool) -> None:
    model = _model()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    examples = _examples()
    with torch.no_grad():
        padded = causal_lm_loss(model, Collator(0)(examples))
        packed = causal_lm_loss(model, Collator(0, packing=True, pack_length=128)(examples))
        reference = model(**{k: v for k, v in Collator(0)(examples).items() if k != "num_tokens"})
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded, reference.loss, atol=1e-5, rtol=1e-5)


def test_a_model_that_lets_packed_examples_mix_is_refused() -> None:
    class Leaky(torch.nn.Module):
        """Ignores the packing: attends over the whole row, like a model given a 2D mask."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = _model()
            self.config = self.inner.config

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))

    check_packing_isolation(_model())  # a transformers Llama keeps them apart
    with pytest.raises(ConfigError, match="data.packing"):
        check_packing_isolation(Leaky())


def test_length_grouped_sampler_is_a_seeded_permutation_of_similar_lengths() -> None:
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(5, 250, (203,), generator=g).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=42, megabatch_batches=5)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(203))  # every example exactly once
    assert list(LengthGroupedSampler(lengths, 8, 42, 5)) == epoch0  # same seed, same order
    assert list(LengthGroupedSampler(lengths, 8, 7, 5)) != epoch0  # the seed matters
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch1) == list(range(203)) and epoch1 != epoch0  # a new order per epoch

    def padded_tokens(order: list[int]) -> int:
        return sum(
            max(lengths[i] for i in order[b : b + 8]) * len(order[b : b + 8])
            for b in range(0, len(order), 8)
        )

    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(42)).tolist()
    assert padded_tokens(epoch0) < 0.75 * padded_tokens(shuffled)
    assert len(sampler.batches(0)[-1]) == 203 % 8  # the short batch comes last


def test_data_module_packs_training_batches_and_pads_validation(make_cfg) -> None:
    from framework.manager import build_plugin_manager
    from plugins.models.tiny import build_tokenizer

    tokenizer = build_tokenizer(512)
    examples = [
        {
            "messages": [
                {"role": "user", "content": "word " * n},
                {"role": "assistant", "content": "ok"},
            ]
        }
        for n in range(1, 41)
    ]
    for overrides, key in (
        (("data.packing=true",), "position_ids"),
        (("data.packing=false", "data.group_by_length=true"), "attention_mask"),
    ):
        cfg = make_cfg("model=tiny", "data.batch_size=4", *overrides)
        splits = {"train": examples, "val": examples[:10], "test": []}
        dm = FineTuneDataModule(splits, cfg)
        dm.connect(tokenizer, build_plugin_manager())
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert all(key in b for b in batches)
        assert sum(int(b["num_tokens"]) for b in batches) == sum(
            len(r["input_ids"]) for r in dm.encoded["train"]
        )
        # validation: padded (callbacks read it as the model's usual input), longest first
        val = list(dm.val_dataloader())
        assert all("attention_mask" in b and "position_ids" not in b for b in val)
        widths = [b["input_ids"].shape[1] for b in val]
        assert widths == sorted(widths, reverse=True)


def test_tokenised_splits_are_cached_across_runs(make_cfg, tmp_path: Path) -> None:
    import numpy as np

    from framework import hookimpl
    from framework.manager import build_plugin_manager
    from plugins.models.tiny import build_tokenizer

    class Counter:
        calls = 0

        @hookimpl(wrapper=True)  # wraps the hook: asked for every objective's examples
        def tunesmith_encode_example(self, name, example, tokenizer, cfg):
            Counter.calls += 1  # counts, then lets the sft plugin encode
            return (yield)

    plugins = build_plugin_manager()
    plugins.pm.register(Counter(), name="counter")
    tokenizer = build_tokenizer(512)
    examples = [
        {
            "messages": [
                {"role": "user", "content": f"add {n}"},
                {"role": "assistant", "content": str(n)},
            ]
        }
        for n in range(12)
    ]

    def encoded(*overrides: str) -> list[dict]:
        cfg = make_cfg("model=tiny", f"data.cache_dir={tmp_path / 'cache'}", *overrides)
        dm = FineTuneDataModule({"train": examples, "val": [], "test": []}, cfg)
        dm.connect(tokenizer, plugins)
        return dm.encode("train")

    first = encoded()
    assert Counter.calls == 12
    again = encoded("data.batch_size=2", "data.packing=false")  # batching: same tokens
    assert Counter.calls == 12  # read back, not tokenised again
    assert all(
        np.array_equal(a["input_ids"], b["input_ids"]) and np.array_equal(a["labels"], b["labels"])
        for a, b in zip(first, again, strict=True)
    )
    encoded("data.max_length=4")  # another setting that decides the tokens: tokenised again
    assert Counter.calls == 24
    encoded("data.cache=false")
    assert Counter.calls == 36


def test_packing_auto_packs_only_for_models_that_keep_examples_apart(make_cfg) -> None:
    from peft import PromptTuningConfig, get_peft_model

    llama = _model()
    prompt_tuned = get_peft_model(
        _model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )

    def packing(value: str, model) -> bool:
        dm = FineTuneDataModule(
            {"train": [], "val": [], "test": []}, make_cfg(f"data.packing={value}")
        )
        return dm.packing_for(model)

    assert packing("auto", llama) is True
    assert packing("auto", prompt_tuned) is False  # virtual tokens before every row: padded
    assert packing("false", llama) is False
    assert packing("true", llama) is True
    with pytest.raises(ConfigError, match="data.packing"):
        packing("true", prompt_tuned)
    with pytest.raises(ConfigError, match="auto, true or false"):
        packing("sometimes", llama)

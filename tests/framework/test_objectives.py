"""Objectives as a contract: options, batch fields through the token cache, the collate hook,
packing, the loss context and the reference model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from framework.data import token_cache
from framework.data.collate import Collator, is_padded_batch, pad_ids, pad_labels
from framework.data.datamodule import FineTuneDataModule
from framework.descriptors import Objective
from framework.errors import ConfigError, TunesmithError
from framework.manager import build_plugin_manager
from framework.pipeline import config_changes
from framework.train.module import validation_weight
from framework.train.objective import (
    LossContext,
    ReferenceModel,
    compute_loss,
    describe_objective,
    objective_options,
)
from tests.framework import objective_plugins

PLUGIN = "tests.framework.objective_plugins"


def _examples(n: int = 6) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"add {k} and {k}"},
                {"role": "assistant", "content": str(2 * k)},
            ]
        }
        for k in range(n)
    ]


@pytest.fixture
def plugins():
    return build_plugin_manager(extra=[PLUGIN], entry_points=False)


@pytest.fixture
def tokenizer():
    from plugins.models.tiny import build_tokenizer

    return build_tokenizer(512)


def _datamodule(make_cfg, plugins, tokenizer, *overrides: str) -> FineTuneDataModule:
    cfg = make_cfg("model=tiny", f"plugins=[{PLUGIN}]", "data.batch_size=4", *overrides)
    dm = FineTuneDataModule({"train": _examples(), "val": _examples(3), "test": []}, cfg)
    dm.connect(tokenizer, plugins)
    return dm


# --------------------------------------------------------------------------- config


def test_objective_is_a_group_with_options(make_cfg, plugins) -> None:
    assert make_cfg().objective.name == "sft"
    assert make_cfg("objective=pretrain").objective.name == "pretrain"
    # a plugin objective without a config file: picked by name, its declared defaults apply
    cfg = make_cfg(f"plugins=[{PLUGIN}]", "objective.name=paired")
    info = describe_objective(cfg, plugins)
    assert info.batch_fields == ("mirror_ids", "score") and not info.packing
    assert objective_options(cfg, info).weight == 1.0
    cfg = make_cfg(f"plugins=[{PLUGIN}]", "objective.name=paired", "+objective.weight=3")
    assert objective_options(cfg, describe_objective(cfg, plugins)).weight == 3


def test_an_option_the_objective_does_not_declare_is_a_clear_error(make_cfg, plugins) -> None:
    cfg = make_cfg(f"plugins=[{PLUGIN}]", "objective.name=paired", "+objective.wieght=3")
    with pytest.raises(ConfigError) as err:
        describe_objective(cfg, plugins)
    text = err.value.format()
    assert "The objective 'paired' has no option 'wieght'. Did you mean 'weight'?" in text
    assert "where: objective.wieght" in text
    with pytest.raises(ConfigError, match="'sft' has no option 'beta'. It has no options"):
        describe_objective(make_cfg("+objective.beta=0.1"), plugins)


def test_a_run_saved_with_objective_as_a_string_is_unchanged() -> None:
    saved = {"objective": "sft", "seed": 42}
    assert config_changes(saved, {"objective": {"name": "sft"}, "seed": 42}) == []
    assert config_changes(saved, {"objective": {"name": "pretrain"}, "seed": 42}) == [
        "objective.name"
    ]


def test_the_objective_and_its_options_are_in_the_token_cache_key(
    make_cfg, plugins, tokenizer
) -> None:
    def digest(*overrides: str) -> str:
        cfg = make_cfg("model=tiny", f"plugins=[{PLUGIN}]", *overrides)
        return token_cache.setup_digest(tokenizer, cfg, plugins)

    plain = digest("objective.name=paired")
    assert digest("objective.name=paired", "+objective.weight=2") != plain
    assert digest("objective.name=paired", "+objective.weight=2") == digest(
        "objective.name=paired", "+objective.weight=2"
    )
    assert digest() != plain


# --------------------------------------------------------------------------- batch fields


def test_declared_batch_fields_are_kept_compact_and_cached(
    make_cfg, plugins, tokenizer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(objective_plugins, "calls", {})
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    first = _datamodule(make_cfg, plugins, tokenizer, "objective.name=paired", cache)
    rows = first.encode("train")
    assert objective_plugins.calls == {"paired": 6}
    row = rows[0]
    assert set(row) == {"input_ids", "labels", "mirror_ids", "score"}
    assert row["mirror_ids"].dtype == np.int32  # ids kept like input_ids
    assert np.array_equal(row["mirror_ids"], row["input_ids"][::-1])
    assert row["score"] == len(row["input_ids"])

    again = _datamodule(make_cfg, plugins, tokenizer, "objective.name=paired", cache)
    cached = again.encode("train")
    assert objective_plugins.calls == {"paired": 6}  # read back, not encoded again
    for a, b in zip(rows, cached, strict=True):
        assert set(a) == set(b)
        assert np.array_equal(a["mirror_ids"], b["mirror_ids"]) and a["score"] == b["score"]


def test_token_cache_round_trips_sequence_and_scalar_fields(tmp_path: Path) -> None:
    rows = [
        {
            "input_ids": np.arange(n, dtype=np.int32),
            "labels": np.full(n, -100, dtype=np.int32),
            "other_ids": np.arange(n + 1, dtype=np.int32),
            "flag": n % 2 == 0,
        }
        for n in (3, 4, 1)
    ]
    path = tmp_path / "entry.npz"
    token_cache.save(path, rows, ("other_ids", "flag"))
    back = token_cache.load(path, ("other_ids", "flag"))
    assert back is not None and [r["flag"] for r in back] == [False, True, False]
    for a, b in zip(rows, back, strict=True):
        assert np.array_equal(a["other_ids"], b["other_ids"])
    assert token_cache.load(path, ("missing",)) is None  # not a hit for another objective
    odd = [{**r, "other_ids": [[1, 2]]} for r in rows]  # neither a sequence nor one number
    token_cache.save(tmp_path / "odd.npz", odd, ("other_ids", "flag"))
    assert not (tmp_path / "odd.npz").exists()


# --------------------------------------------------------------------------- collate


def test_padding_helpers() -> None:
    ids, mask = pad_ids([[5, 6, 7], np.array([8], dtype=np.int32)], pad_token_id=0, width=4)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert pad_labels([[1], [2, 3]]).tolist() == [[1, -100], [2, 3]]
    with pytest.raises(ValueError):
        pad_ids([[1, 2, 3]], 0, width=2)


def test_collate_hook_batches_the_objectives_examples(make_cfg, plugins, tokenizer) -> None:
    dm = _datamodule(make_cfg, plugins, tokenizer, "objective.name=paired")
    dm.setup("fit")
    for batch in [*dm.train_dataloader(), *dm.val_dataloader()]:
        assert set(batch) == {"ids", "mask", "targets", "mirror", "score", "num_tokens"}
        assert batch["mirror"].shape == batch["ids"].shape
        assert not is_padded_batch(batch)
    # a hook that returns None leaves the batch to the default collator
    dm = _datamodule(make_cfg, plugins, tokenizer, "objective.name=plain", "data.packing=false")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert is_padded_batch(batch) and "num_tokens" in batch


def test_a_collated_batch_without_num_tokens_names_the_objective(
    make_cfg, plugins, tokenizer
) -> None:
    dm = _datamodule(make_cfg, plugins, tokenizer, "objective.name=no_tokens")
    dm.setup("fit")
    with pytest.raises(TunesmithError, match="objective 'no_tokens' returned a batch without"):
        next(iter(dm.train_dataloader()))


def test_an_objective_that_is_not_packed_pads(make_cfg, plugins, tokenizer) -> None:
    dm = _datamodule(make_cfg, plugins, tokenizer, "objective.name=paired", "data.packing=auto")
    assert dm.packing_for(None) is False
    dm = _datamodule(make_cfg, plugins, tokenizer, "objective.name=paired", "data.packing=true")
    with pytest.raises(ConfigError) as err:
        dm.packing_for(None)
    assert "objective 'paired' cannot be trained on packed batches" in err.value.format()
    dm = _datamodule(make_cfg, plugins, tokenizer, "objective.name=plain", "data.packing=true")
    assert dm.packing_for(None) is True


def test_default_collator_is_unchanged_by_the_hook_machinery() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    batch = Collator(0, custom=lambda rows: None)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert int(batch["num_tokens"]) == 4


# --------------------------------------------------------------------------- loss context


def test_validation_weight_needs_no_labels() -> None:
    labels = torch.tensor([[-100, 5, 6], [-100, -100, 7]])
    assert validation_weight({"labels": labels, "num_tokens": torch.tensor(9)}) == 3
    assert validation_weight({"ids": torch.zeros(2, 3), "num_tokens": torch.tensor(5)}) == 5
    assert validation_weight({"ids": torch.zeros(4, 3)}) == 4


def test_only_an_objective_declaring_a_reference_may_ask_for_it(make_cfg) -> None:
    ctx = LossContext(cfg=make_cfg(), options=make_cfg().objective, objective=Objective("x"))
    with pytest.raises(TunesmithError, match="does not declare that it needs one"), ctx.reference():
        pass


def _tiny(make_cfg, tmp_path: Path):
    from framework.run import Run

    run = Run(cfg=make_cfg("model=tiny"), dir=tmp_path, plugins=build_plugin_manager())
    return run.build_base()


def test_reference_of_a_full_model_is_a_frozen_copy(make_cfg, tmp_path: Path) -> None:
    model, _ = _tiny(make_cfg, tmp_path)
    model.train()
    ref = ReferenceModel(model)
    assert not ref.uses_adapters and ref.copy is not model
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # "training" the model leaves the reference where it was
    with ref(model) as frozen:
        assert frozen is ref.copy and not frozen.training and not torch.is_grad_enabled()
        assert all(not p.requires_grad for p in frozen.parameters())
        out = frozen(input_ids=ids).logits
    fresh, _ = _tiny(make_cfg, tmp_path)
    with torch.no_grad():
        assert torch.allclose(out, fresh(input_ids=ids).logits)


def test_reference_of_a_peft_model_is_its_base_with_adapters_off(make_cfg, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base, _ = _tiny(make_cfg, tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # the adapters now change the output
        assert not torch.allclose(model(input_ids=ids).logits, expected)
    ref = ReferenceModel(model)
    assert ref.uses_adapters and ref.copy is None
    with ref(model) as frozen:
        assert frozen is model and not frozen.training
        assert torch.allclose(frozen(input_ids=ids).logits, expected, atol=1e-6)
    assert model.training  # modes are put back
    assert not torch.allclose(model(input_ids=ids).logits, expected)  # adapters back on


def test_compute_loss_passes_the_context_and_old_impls_still_work(
    make_cfg, plugins, tokenizer, tmp_path: Path
) -> None:
    model, _ = _tiny(make_cfg, tmp_path)
    dm = _datamodule(make_cfg, plugins, tokenizer, "objective.name=paired")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    logged: dict[str, float] = {}
    cfg = dm.cfg
    info = describe_objective(cfg, plugins)

    def ctx(weight: float) -> LossContext:
        return LossContext(
            cfg=cfg,
            options=SimpleNamespace(weight=weight),
            objective=info,
            logger=lambda k, v: logged.__setitem__(k, float(v)),
        )

    one = compute_loss(plugins, model, batch, cfg, ctx(1.0))
    two = compute_loss(plugins, model, batch, cfg, ctx(2.0))
    assert float(two) == pytest.approx(2 * float(one))
    assert logged["score"] == pytest.approx(float(batch["score"].mean()))
    # the in-tree sft plugin takes (name, model, batch, cfg): no ctx, still called
    sft = _datamodule(make_cfg, plugins, tokenizer, "data.packing=false")
    sft.setup("fit")
    assert float(compute_loss(plugins, model, next(iter(sft.train_dataloader())), sft.cfg)) > 0

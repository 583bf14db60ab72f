"""Every fine-tuning method trains the tiny model, lowers its loss and reloads to the same outputs."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from framework import Method
from framework.errors import ConfigError
from framework.manager import build_plugin_manager
from tests.conftest import TINY, run_cli
from tests.helpers import batch_of, fit, mean_loss, reload

#: Per method: the overrides that make a few steps of the tiny model learn visibly.
METHODS: dict[str, tuple[str, ...]] = {
    "full": ("optim.lr=1e-3",),
    "freeze": ("optim.lr=3e-3", "method.last_n_layers=1"),
    "lora": (
        "optim.lr=1e-2",
        "method.r=4",
        "method.target_modules=all-linear",
        "method.use_rslora=true",
    ),
    "dora": ("optim.lr=1e-2", "method.r=4"),
    "qlora": ("optim.lr=1e-2", "method.r=4"),
    "ia3": ("optim.lr=5e-2",),
    "prompt_tuning": ("optim.lr=5e-2", "method.num_virtual_tokens=4"),
    "prefix_tuning": ("optim.lr=3e-2", "method.num_virtual_tokens=4"),
}


def declared(method: str) -> Method:
    """The in-tree method's descriptor."""
    info = build_plugin_manager(entry_points=False).describe("method", method)
    assert isinstance(info, Method), f"{method} declares no Method"
    return info


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_lowers_the_loss_and_reloads_to_the_same_outputs(
    method: str, make_cfg, alpaca_file: Path
) -> None:
    cfg = make_cfg(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        f"method={method}",
        "trainer.max_steps=8",
        "optim.scheduler=constant",
        *METHODS[method],
    )
    run = fit(cfg)
    base, _ = run.build_base()
    assert mean_loss(run.model, run) < mean_loss(base, run) - 0.05

    # what was saved: an adapter for adapter methods, a whole model for full and freeze
    artifact = run.artifact_dir
    kind = declared(method).kind
    if kind == "adapter":
        assert (artifact / "adapter_config.json").is_file()
        assert not (artifact / "model.safetensors").exists()
    else:
        assert (artifact / "model.safetensors").is_file()
    assert (artifact / "tokenizer_config.json").is_file()

    reloaded = reload(cfg)
    batch = batch_of(run)
    with torch.no_grad():
        expected = run.model.eval()(**batch).logits
        got = reloaded.eval()(**batch).logits
    # bitsandbytes repacks 4-bit weights for its CPU kernel at the first no-grad forward and
    # unpacks them (with rounding of the quantization constants) at each state_dict(): the
    # model that went through validations and checkpoints drifts by ~1e-3 from a fresh load.
    tol = 1e-2 if method == "qlora" else 1e-5
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)

    # the evaluate stage scores the tuned model too (virtual tokens are not scored)
    from framework.data.prepare import load_splits
    from framework.evaluate.stats import answer_loss

    total, count = answer_loss(reloaded, run.tokenizer, load_splits(run)["val"], cfg)
    assert count > 0 and math.isfinite(total)

    summary = json.loads((run.dir / "train_summary.json").read_text())
    assert summary["method"] == method and summary["status"] == "finished"
    assert 0 < summary["trainable"] <= summary["total"]
    assert (summary["trainable"] == summary["total"]) == (kind == "full")


def test_every_method_declares_its_kind() -> None:
    pm = build_plugin_manager(entry_points=False)
    assert set(METHODS) <= set(pm.names("method"))
    kinds = {name: declared(name).kind for name in METHODS}
    assert kinds["full"] == "full" and kinds["freeze"] == "partial"
    assert {n for n, k in kinds.items() if k == "adapter"} == set(METHODS) - {"full", "freeze"}
    assert declared("qlora").base_bits == 4
    assert all(declared(n).base_bits is None for n in METHODS if n != "qlora")
    assert all(declared(n).description for n in METHODS)


def test_memory_estimate_reads_the_method_descriptor(tmp_path: Path) -> None:
    """Quantized base: less to load; every weight training: more to train; undeclared: the
    conservative estimate of full fine-tuning."""
    from framework.model.loading import estimate_memory, model_shape
    from plugins.models.tiny import build
    from tests.conftest import compose_config

    cfg = compose_config(["model=tiny"])
    folder = build(tmp_path / "tiny", dict(cfg.model.architecture))
    est = {
        n: estimate_memory(folder, cfg, declared(n)) for n in ("lora", "qlora", "full", "freeze")
    }
    unknown = estimate_memory(folder, cfg, None)
    shape = model_shape(folder)  # 4 bits a weight, but the embeddings stay in float32
    quantized = shape.parameters - shape.embedding_parameters
    assert est["lora"].load_bytes == shape.parameters * 4
    assert est["qlora"].load_bytes == pytest.approx(
        quantized / 2 + shape.embedding_parameters * 4, abs=1
    )
    assert est["qlora"].train_bytes < est["lora"].train_bytes
    assert est["lora"].train_bytes < est["freeze"].train_bytes < est["full"].train_bytes
    assert unknown.train_bytes == est["full"].train_bytes
    # a plugin declaring its share of trainable parameters is estimated with it
    tiny_share = Method("x", kind="partial", trainable_share=0.0)
    assert estimate_memory(folder, cfg, tiny_share).train_bytes < est["lora"].train_bytes


def test_lora_options_from_the_command_line_reach_peft(make_cfg, alpaca_file: Path) -> None:
    cfg = make_cfg(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "method=dora",
        "trainer.max_steps=1",
        "method.r=2",
        "method.lora_alpha=8",
        "method.target_modules=[q_proj,v_proj]",
        "method.use_rslora=true",
        "+method.alpha_pattern={v_proj:16}",  # an option the YAML does not list takes a +
    )
    run = fit(cfg)
    saved = json.loads((run.artifact_dir / "adapter_config.json").read_text())
    assert saved["r"] == 2 and saved["lora_alpha"] == 8 and saved["use_rslora"] is True
    assert saved["alpha_pattern"] == {"v_proj": 16}
    assert saved["use_dora"] is True  # the dora method sets it
    assert sorted(saved["target_modules"]) == ["q_proj", "v_proj"]


def test_misspelled_peft_option_names_the_key_and_the_closest_option(make_cfg) -> None:
    from plugins.methods.peft_common import peft_config

    cfg = make_cfg("method=lora", "+method.lora_alpah=8")
    with pytest.raises(ConfigError) as err:
        peft_config("LoraConfig", cfg.method)
    assert "method.lora_alpah" in str(err.value) and "Did you mean 'lora_alpha'?" in str(err.value)


def test_freeze_leaves_frozen_weights_unchanged(make_cfg, alpaca_file: Path) -> None:
    cfg = make_cfg(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "method=freeze",
        "method.last_n_layers=1",
        r"method.trainable_modules=[model\.norm]",
        "optim.lr=1e-2",
        "optim.weight_decay=0.1",  # decay must not touch frozen weights either
        "trainer.max_steps=3",
    )
    run = fit(cfg)
    before = dict(run.build_base()[0].named_parameters())
    after = dict(reload(cfg).named_parameters())
    last = f"model.layers.{cfg.model.architecture.num_hidden_layers - 1}."
    trained = {n for n in after if n.startswith(last) or n == "model.norm.weight"}
    assert trained and len(trained) < len(after)
    for name, p in after.items():
        if name in trained:
            assert not torch.equal(p, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, before[name]), f"{name} is frozen but changed"


def test_freeze_rejects_a_choice_that_trains_nothing_or_does_not_exist(make_cfg) -> None:
    from framework.manager import build_plugin_manager
    from framework.run import Run
    from plugins.methods.freezing import select_trainable

    cfg = make_cfg(*TINY, "method=freeze")
    model, _ = Run(
        cfg=cfg, dir=Path(cfg.paths.run_dir), plugins=build_plugin_manager()
    ).build_base()
    with pytest.raises(ConfigError, match="out of range"):
        select_trainable(model, last_n_layers=99)
    with pytest.raises(ConfigError, match="matches no parameter"):
        select_trainable(model, trainable_modules=["no_such_module"])
    with pytest.raises(ConfigError, match="nothing to train"):
        select_trainable(model)


def test_qlora_loads_the_base_in_4bit_nf4(make_cfg, alpaca_file: Path) -> None:
    cfg = make_cfg(*TINY, "data=alpaca", f"data.path={alpaca_file}", "method=qlora")
    from framework.manager import build_plugin_manager
    from framework.run import Run

    run = Run(cfg=cfg, dir=Path(cfg.paths.run_dir), plugins=build_plugin_manager())
    base, _ = run.build_base()
    layers = [m for m in base.modules() if type(m).__name__ == "Linear4bit"]
    assert layers and all(m.weight.quant_state.quant_type == "nf4" for m in layers)
    plain, _ = run.build_base(method_load=False)
    assert not any(type(m).__name__ == "Linear4bit" for m in plain.modules())


def test_a_plugin_outside_the_core_adds_a_method_and_a_loss(
    tmp_path: Path, alpaca_file: Path
) -> None:
    """A third-party package: a plugin module plus its own config folder, nothing in the core."""
    pkg = tmp_path / "pkg"
    (pkg / "conf" / "method").mkdir(parents=True)
    (pkg / "conf" / "objective").mkdir()
    (pkg / "norm_tuning_plugin.py").write_text(
        textwrap.dedent(
            '''
            """norm_tuning: train only the normalisation weights; save just those tensors."""
            import torch.nn.functional as F
            from safetensors.torch import load_file, save_file

            from framework import hookimpl
            from framework.data.chat import encode_chat


            @hookimpl
            def tunesmith_provides():
                return {"method": ["norm_tuning"], "objective": ["sft_smooth"]}


            @hookimpl
            def tunesmith_apply_method(name, model, cfg):
                if name != "norm_tuning":
                    return None
                for pname, p in model.named_parameters():
                    p.requires_grad_(cfg.method.pattern in pname)
                return model


            @hookimpl
            def tunesmith_save_method(name, model, tokenizer, path):
                if name != "norm_tuning":
                    return None
                trained = {n: p.detach().contiguous() for n, p in model.named_parameters()
                           if p.requires_grad}
                save_file(trained, str(path / "norms.safetensors"))
                return path


            @hookimpl
            def tunesmith_load_method(name, base_model, path):
                if name != "norm_tuning":
                    return None
                base_model.load_state_dict(load_file(str(path / "norms.safetensors")),
                                           strict=False)
                return base_model


            @hookimpl
            def tunesmith_encode_example(name, example, tokenizer, cfg):
                if name != "sft_smooth":
                    return None
                return encode_chat(tokenizer, example["messages"], int(cfg.data.max_length))


            @hookimpl
            def tunesmith_compute_loss(name, model, batch, cfg):
                if name != "sft_smooth":
                    return None
                from framework.train.losses import model_inputs  # padded or packed batches

                logits = model(**model_inputs(batch)).logits[:, :-1]
                return F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                       ignore_index=-100, label_smoothing=0.1)
            '''
        )
    )
    (pkg / "conf" / "method" / "norm_tuning.yaml").write_text(
        "# Train only the normalisation weights (an example third-party method).\n"
        "name: norm_tuning\npattern: norm\n"
    )
    (pkg / "conf" / "objective" / "sft_smooth.yaml").write_text(
        "# sft with label smoothing (an example third-party objective).\nname: sft_smooth\n"
    )
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        f"hydra.searchpath=[file://{pkg / 'conf'}]",
        "plugins=[norm_tuning_plugin]",
        "method=norm_tuning",
        "objective=sft_smooth",
        "optim.lr=5e-2",
        "stages=[prepare,train]",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"PYTHONPATH": str(pkg)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["method"] == "norm_tuning"
    assert 0 < summary["trainable"] < summary["total"]
    assert (run_dir / "artifact" / "norms.safetensors").is_file()


@pytest.mark.slow
def test_qlora_on_smollm2_peaks_below_lora(tmp_path: Path) -> None:
    """The reason to pick qlora: the 4-bit base model needs less memory than lora's fp32 one."""
    import importlib.util

    from framework.resolvers import ROOT_DIR

    spec = importlib.util.spec_from_file_location(
        "methods_memory", ROOT_DIR / "benchmarks" / "methods_memory.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lora = bench.measure("lora", 2, tmp_path)
    qlora = bench.measure("qlora", 2, tmp_path)
    for result in (lora, qlora):
        assert result["returncode"] == 0, result.get("stderr_tail")
    assert qlora["trainable"] == lora["trainable"]  # the same adapter on both
    assert qlora["peak_rss_mib"] < lora["peak_rss_mib"], (lora, qlora)


def test_qlora_config_mistakes_are_named(make_cfg) -> None:
    from framework.errors import ModelError
    from plugins.methods.quantization import bnb_config
    from tests.helpers import new_run

    with pytest.raises(ConfigError, match="Did you mean 'bnb_4bit_quant_type'"):
        bnb_config({"load_in_4bit": True, "bnb_4bit_quant_typ": "nf4"})
    with pytest.raises(ConfigError, match="neither in 4-bit nor in 8-bit"):
        bnb_config({"load_in_4bit": False})
    cfg = make_cfg(*TINY, "method=qlora")
    run = new_run(cfg)
    plain, _ = run.build_base(method_load=False)  # a model plugin that ignored the 4-bit load
    with pytest.raises(ModelError, match="needs a quantized base model"):
        run.hook.tunesmith_apply_method(name="qlora", model=plain, cfg=cfg)

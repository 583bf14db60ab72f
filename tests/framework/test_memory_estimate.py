"""The memory estimate: model size x method x precision, said before loading, with the declared
methods that would fit (issue 17); the table in docs/methods.md is the script's output."""

from __future__ import annotations

import importlib.util
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from framework.descriptors import Method
from framework.model.loading import (
    GiB,
    ModelShape,
    TrainingSetup,
    estimate_memory,
    training_memory,
)
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("memory_table", ROOT / "scripts/memory_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_in_the_docs_is_what_the_script_prints() -> None:
    script = _script()
    doc = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    _, _, rest = doc.partition(script.START)
    shown, found, _ = rest.partition(script.END)
    assert found, "docs/methods.md lost its memory-table markers"
    assert shown.strip() == script.render(["full", "lora", "qlora"]).strip(), (
        "run: python scripts/memory_table.py --write"
    )


def test_the_table_uses_the_published_qwen25_sizes() -> None:
    script = _script()
    counts = {size: shape.parameters for size, shape in script.qwen_shapes().items()}
    assert counts == {
        "0.5B": 494_032_768,
        "1.5B": 1_543_714_304,
        "7B": 7_615_616_512,
        "14B": 14_770_033_664,
    }


SEVEN_B = ModelShape.from_config(
    {"hidden_size": 3584, "num_hidden_layers": 28, "vocab_size": 152064,
     "tie_word_embeddings": False},
    7_615_616_512,
)  # fmt: skip
FULL, LORA = Method("full", kind="full"), Method("lora", kind="adapter")
QLORA = Method("qlora", kind="adapter", base_bits=4)


def _gib(method: Method, dtype: str, precision: str, checkpointing: bool = False) -> float:
    return (
        training_memory(SEVEN_B, method, TrainingSetup(dtype, precision, 2048, checkpointing))[1]
        / GiB
    )


def test_the_estimate_covers_method_and_precision() -> None:
    # full fine-tuning: 16 bytes a parameter in float32, half of that with bfloat16 weights
    assert 110 < _gib(FULL, "float32", "32-true") < 140
    assert _gib(FULL, "bfloat16", "bf16-true") < 0.55 * _gib(FULL, "float32", "32-true")
    # mixed precision keeps float32 weights and adds 16-bit copies: no less than float32
    assert _gib(FULL, "float32", "bf16-mixed") > _gib(FULL, "float32", "32-true")
    # LoRA: the frozen base's weights dominate; a bfloat16 base halves them
    assert 28 < _gib(LORA, "float32", "32-true") < 50
    assert _gib(LORA, "bfloat16", "bf16-mixed") < 0.6 * _gib(LORA, "float32", "32-true")
    # QLoRA: 4-bit linear weights, embeddings as they are
    assert _gib(QLORA, "bfloat16", "bf16-mixed", True) < 12
    assert _gib(LORA, "float32", "32-true", True) < _gib(LORA, "float32", "32-true")
    # every method of the three, in every precision, orders the same way
    for dtype, precision in (("float32", "32-true"), ("bfloat16", "bf16-true")):
        assert _gib(QLORA, dtype, precision, True) < _gib(LORA, dtype, precision)
        assert _gib(LORA, dtype, precision) < _gib(FULL, dtype, precision)


def _tiny(tmp_path: Path) -> Path:
    from plugins.models.tiny import build

    return build(tmp_path / "tiny", dict(compose_config(["model=tiny"]).model.architecture))


def test_before_loading_it_says_the_model_fits(tmp_path: Path, monkeypatch, caplog) -> None:
    import framework.model.loading as loading

    folder = _tiny(tmp_path)
    cfg = compose_config(["model=hf", f"model.path={folder}", "trainer.accelerator=cpu"])
    monkeypatch.setattr(loading, "available_memory", lambda device: (64 * GiB, "free RAM"))
    loading._warned.clear()
    with (
        caplog.at_level(logging.INFO, logger="framework.model.loading"),
        loading.method_load_kwargs(None, method=LORA),
    ):
        model, _ = loading.load_pretrained(folder, cfg)
    assert "Memory: " in caplog.text and "to train with method=lora" in caplog.text
    assert "64.0 GiB is free RAM (cpu): it should fit." in caplog.text
    assert model is not None


def test_too_large_names_the_declared_methods_that_would_fit(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """Between what freeze and LoRA need: LoRA-like methods fit, freeze does not; a method
    declared by an outside plugin is offered too (no list of names in the core)."""
    import framework.model.loading as loading

    (tmp_path / "featherweight_plugin.py").write_text(
        textwrap.dedent(
            """
            from framework import hookimpl
            from framework.descriptors import Method

            @hookimpl
            def tunesmith_provides():
                return [Method("featherweight", kind="adapter", base_bits=2, trainable_share=0.0)]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = _tiny(tmp_path)
    cfg = compose_config(
        [
            "model=hf",
            f"model.path={folder}",
            "method=full",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "plugins=[featherweight_plugin]",
        ]
    )
    freeze = estimate_memory(folder, cfg, Method("freeze", kind="partial"))
    lora = estimate_memory(folder, cfg, LORA)
    free = (freeze.train_bytes + lora.train_bytes) // 2
    monkeypatch.setattr(loading, "available_memory", lambda device: (free, "free RAM"))
    loading._warned.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="framework.model.loading"):
            est = loading.warn_if_too_large(folder, cfg, FULL)
    finally:
        sys.modules.pop("featherweight_plugin", None)
    assert est is not None and not est.fits()
    text = caplog.text
    assert "will likely not fit in memory" in text and "to train with method=full" in text
    assert "float32 weights, trainer.precision=32-true" in text
    line = next(line for line in text.splitlines() if "By method" in line)
    assert "method=lora" in line and "method=qlora" in line and "method=featherweight" in line
    assert "method=full " not in line  # not offered itself
    offered = {part.split(" ~")[0]: part for part in line.split(": ", 1)[1].split(", ")}
    assert "(fits)" in next(v for k, v in offered.items() if "method=lora" in k)
    assert "(fits)" not in next(v for k, v in offered.items() if "method=freeze" in k)
    assert "model.dtype=bfloat16" in text


def test_the_estimate_follows_model_dtype(tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    base = ["model=hf", f"model.path={folder}", "trainer.accelerator=cpu"]
    fp32 = estimate_memory(folder, compose_config([*base, "model.dtype=float32"]), LORA)
    bf16 = estimate_memory(folder, compose_config([*base, "model.dtype=bfloat16"]), LORA)
    assert bf16.load_bytes == pytest.approx(fp32.load_bytes / 2, abs=1)
    assert (fp32.dtype, bf16.dtype) == ("float32", "bfloat16")

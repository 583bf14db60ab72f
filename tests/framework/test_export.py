"""The export stage: adapter and merged exports, dtype, model card, QLoRA's full-precision merge.

The merge itself lives with the ``merged`` export (``plugins/exports/merging.py``); the stage
writes what every format shares (the model card from the format's declared ``writes``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from framework.errors import ConfigError, ModelError
from framework.export.stage import export
from framework.manager import build_plugin_manager
from plugins.exports.merging import full_precision_config, merged_model
from tests.framework.tiny_run import finished_run, run_of

PROMPTS = [
    [{"role": "user", "content": "Add the numbers.\n\n3 + 4"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Add the numbers.\n\n8 + 5"},
    ],
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run(tmp_path_factory)


def _encode(tokenizer, messages_list):
    texts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages_list
    ]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _logits(model, enc) -> torch.Tensor:
    with torch.inference_mode():
        return model(**enc).logits.float()


def test_merged_export_gives_the_same_logits_as_base_plus_adapter(run_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = run_dir / "export" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    enc = _encode(tokenizer, PROMPTS)

    run = run_of(run_dir)
    base, _ = run.build_base()
    base_logits = _logits(base.eval(), enc)
    tuned = PeftModel.from_pretrained(base, run_dir / "export" / "adapter").eval()
    tuned_logits = _logits(tuned, enc)
    merged_logits = _logits(merged, enc)

    mask = enc["attention_mask"].bool()
    # the adapter changes the model, so equality below is not a given
    assert (tuned_logits[mask] - base_logits[mask]).abs().max() > 1e-3
    torch.testing.assert_close(merged_logits[mask], tuned_logits[mask], atol=1e-4, rtol=1e-4)


CLEAN_LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoTunesmith(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"framework", "plugins", "tunesmith"}:
                raise ImportError("tunesmith is not installed here: " + name)

    sys.meta_path.insert(0, NoTunesmith())
    try:
        import framework
    except ImportError:
        pass
    else:
        sys.exit("framework is importable: the check would prove nothing")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = sys.argv[1]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add the numbers.\\n\\n3 + 4"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"framework", "plugins"})
    print(json.dumps({
        "logits": model(**enc).logits[0, -1].tolist(),
        "new_tokens": out.shape[1] - enc["input_ids"].shape[1],
        "eos": model.generation_config.eos_token_id,
        "tunesmith_modules": loaded,
    }))
    """
)


def test_merged_export_loads_with_transformers_alone(run_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = run_dir / "export" / "merged"
    names = {p.name for p in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= names
    assert "tokenizer.json" in names and "chat_template.jinja" in names
    assert not any(n.endswith(".bin") for n in names)  # safetensors only

    script = tmp_path / "load.py"
    script.write_text(CLEAN_LOADER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(merged_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tunesmith_modules"] == []
    assert result["new_tokens"] >= 1

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    here = AutoModelForCausalLM.from_pretrained(merged_dir)
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add the numbers.\n\n3 + 4"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    expected = _logits(here, enc)[0, -1]
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-5, rtol=1e-5)
    # generation stops at the chat template's end of turn
    eos = result["eos"] if isinstance(result["eos"], list) else [result["eos"]]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos


def test_merged_export_in_bfloat16(run_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "checkpoints"))
    run = run_of(
        copy,
        "export.formats=[merged]",
        "export.dtype=bfloat16",
        "export.generation.do_sample=true",
        "export.generation.temperature=0.6",
    )
    (written,) = export(run)
    assert json.loads((written / "config.json").read_text())["dtype"] == "bfloat16"
    gen = json.loads((written / "generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["temperature"] == 0.6 and gen["eos_token_id"] == 2
    with safe_open(str(written / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    assert dtypes == {torch.bfloat16}

    tokenizer = AutoTokenizer.from_pretrained(written)
    enc = _encode(tokenizer, PROMPTS)
    bf16 = AutoModelForCausalLM.from_pretrained(written)
    fp32 = AutoModelForCausalLM.from_pretrained(run_dir / "export" / "merged")
    assert bf16.dtype == torch.bfloat16
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(
        _logits(bf16, enc)[mask], _logits(fp32, enc)[mask], atol=0.1, rtol=0.05
    )
    assert "| exported dtype | bfloat16 |" in (written / "README.md").read_text()


def test_model_card_is_written_from_the_run(run_dir: Path) -> None:
    card = (run_dir / "export" / "merged" / "README.md").read_text()
    report = json.loads((run_dir / "data" / "report.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())

    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "from `tiny` using `lora`" in card
    assert report["fingerprint"] in card
    assert report["sources"][0]["files"][0] in card
    assert "| train / val / test | 32 / 4 / 4 |" in card
    assert "| method.r | 8 |" in card
    assert "| optim.lr | 0.002 |" in card
    assert "| trainer.max_steps | 4 |" in card
    ppl_base, ppl_tuned = metrics["base"]["perplexity"], metrics["tuned"]["perplexity"]
    row = f"| perplexity | {ppl_base:.4g} | {ppl_tuned:.4g} | {ppl_tuned - ppl_base:+.4g} |"
    assert row in card
    assert "| exact_match |" in card

    adapter_card = (run_dir / "export" / "adapter" / "README.md").read_text()
    assert adapter_card.startswith("---\nlibrary_name: peft\n")
    # what each format and the method are comes from their descriptors
    pm = build_plugin_manager(entry_points=False)
    assert pm.describe("export", "merged").writes in card
    assert pm.describe("export", "adapter").writes in adapter_card
    assert "This folder holds a whole model" in card
    assert "This folder holds a PEFT adapter" in adapter_card
    assert pm.describe("method", "lora").description in card
    assert "| exported dtype | float32 |" in card
    assert report["fingerprint"] in adapter_card
    # the full resolved config travels with every export
    saved = OmegaConf.load(run_dir / "export" / "adapter" / "tunesmith_config.yaml")
    assert saved.model.name == "tiny" and saved.method.r == 8


def test_adapter_export_is_the_trained_adapter(run_dir: Path) -> None:
    adapter = run_dir / "export" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    assert (adapter / "adapter_model.safetensors").read_bytes() == (
        run_dir / "artifact" / "adapter_model.safetensors"
    ).read_bytes()


def test_full_precision_config_switches_quantization_off(make_cfg) -> None:
    from omegaconf import open_dict

    cfg = make_cfg("model=tiny", "model.dtype=auto")
    with open_dict(cfg):
        cfg.method.quantization = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
        cfg.method.load_in_4bit = True
        cfg.model.load_in_8bit = True
    full = full_precision_config(cfg)
    assert full.method.quantization is None
    assert full.method.load_in_4bit is False and full.model.load_in_8bit is False
    assert full.model.dtype == "float32"
    assert cfg.method.load_in_4bit is True  # the run's own config is left alone
    assert full.method.r == cfg.method.r


def test_qlora_like_run_merges_into_a_full_precision_base(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omegaconf import open_dict

    from framework.run import Run

    run = run_of(run_dir)
    with open_dict(run.cfg):
        run.cfg.method.quantization = {"load_in_4bit": True}
    seen = []
    real_build = Run.build_base

    def build_base(self: Run, **kwargs):
        seen.append(self.cfg.method.quantization)
        return real_build(self, **kwargs)

    monkeypatch.setattr(Run, "build_base", build_base)
    merged, _ = merged_model(run)
    assert seen == [None]
    assert not any("lora" in n for n, _ in merged.named_parameters())

    # a model plugin that ignores the switch gets a clear error, never a lossy merge
    def quantized_base(self: Run, **kwargs):
        model, tok = real_build(self, **kwargs)
        model.is_loaded_in_4bit = True
        return model, tok

    monkeypatch.setattr(Run, "build_base", quantized_base)
    with pytest.raises(ModelError, match="came out quantized"):
        merged_model(run)


def test_wrong_export_settings_fail_before_any_work(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "checkpoints"))
    with pytest.raises(ConfigError, match="export.dtype"):
        export(run_of(copy, "export.formats=[merged]", "export.dtype=int3"))
    with pytest.raises(ConfigError, match="No plugin serves export 'gguf'"):
        export(run_of(copy, "export.formats=[adapter,gguf]"))
    assert not (copy / "export").exists()
    # settings that only fail while writing leave no half-written folder behind
    with pytest.raises(ConfigError, match="export.generation"):
        export(run_of(copy, "export.formats=[merged]", "export.generation.temperature=0.5"))
    assert not (copy / "export" / "merged").exists()


def test_a_new_export_format_is_described_by_what_it_declares(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from framework.run import Run

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "copy_export.py").write_text(
        textwrap.dedent(
            """
            import shutil

            from framework import ExportFormat, hookimpl


            @hookimpl
            def tunesmith_provides():
                return [ExportFormat("plain_copy", writes="a plain copy of what trained")]


            @hookimpl
            def tunesmith_export(name, run, path):
                if name != "plain_copy":
                    return None
                shutil.copytree(run.artifact_dir, path, dirs_exist_ok=True)
                return path
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "checkpoints"))
    cfg = run_of(copy, "export.formats=[plain_copy]").cfg
    run = Run(cfg=cfg, dir=copy, plugins=build_plugin_manager(extra=["copy_export"]))
    (written,) = export(run)
    card = (written / "README.md").read_text()
    assert "Export format `plain_copy`: a plain copy of what trained." in card
    assert "This folder holds a PEFT adapter" in card  # read from the folder, not the name
    assert card.startswith("---\nlibrary_name: peft\n")


def test_an_export_folder_is_served_under_the_run_name_whatever_it_is_called(
    run_dir: Path, tmp_path: Path
) -> None:
    from framework.serve.engine import load_chat_model

    renamed = tmp_path / "my_model"
    shutil.copytree(run_dir / "export" / "merged", renamed)
    for folder in (run_dir / "export" / "merged", renamed):
        run = run_of(run_dir, f"serve.model={folder}", "serve.device=cpu")
        _, _, model_id = load_chat_model(run)
        assert model_id == "tiny-lora-alpaca"  # from the export's tunesmith_config.yaml

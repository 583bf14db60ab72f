"""Print the table of training memory by model size x method x precision (docs/methods.md).

The figures come from tunesmith's own estimator (``framework.model.loading.training_memory``,
the one that warns before a model is loaded), fed with each method's declared descriptor
(``Method(kind, base_bits, trainable_share)`` from its plugin) and the default configs
(``data.batch_size`` x ``data.max_length`` tokens per step, each method's own
``gradient_checkpointing``). The model sizes are the Qwen2.5 family: their shapes are those
of the released ``config.json`` files, and the parameter counts computed from them
(:func:`qwen2_parameters`) are the published ones (0.49B, 1.54B, 7.61B, 14.7B).

    python scripts/memory_table.py                       # the table, as in docs/methods.md
    python scripts/memory_table.py --methods full,lora,qlora,freeze
    python scripts/memory_table.py --write               # update docs/methods.md in place
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from framework.descriptors import Method  # noqa: E402
from framework.model.hardware import Device, choose_dtype  # noqa: E402
from framework.model.loading import (  # noqa: E402
    GiB,
    ModelShape,
    TrainingSetup,
    default_checkpointing,
    training_memory,
)

DOC = ROOT / "docs" / "methods.md"
START = "<!-- memory-table:start (python scripts/memory_table.py --write) -->"
END = "<!-- memory-table:end -->"

#: Qwen2.5 shapes, from each model's config.json.
QWEN25 = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                 tie_word_embeddings=True),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                 tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
               tie_word_embeddings=False),
    "14B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                tie_word_embeddings=False),
}  # fmt: skip

#: The columns: ``(heading, trainer.precision, the device whose auto dtype is used)``.
#: ``bf16-mixed`` on a GPU holds an adapter's frozen base in bfloat16 and a full fine-tune's
#: weights in float32 (framework/model/hardware.py); ``bf16-true`` holds every weight in bf16.
GPU = Device("cuda", "a GPU with bfloat16", True, True, "computes bfloat16 natively")
CPU = Device("cpu", "a CPU without AVX512-BF16", False, False, "has no AVX512-BF16/AMX")
COLUMNS = (
    ("`32-true` (float32)", "32-true", CPU),
    ("`bf16-mixed` (auto dtype)", "bf16-mixed", GPU),
    ("`bf16-true` (bfloat16)", "bf16-true", GPU),
)


def qwen2_parameters(config: dict) -> int:
    """The parameter count of a Qwen2 model from its config (q/k/v biases; tied weights once)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q, k, v with bias; o without
    block = attention + 3 * h * i + 2 * h  # gate/up/down, two RMSNorms
    embeddings = config["vocab_size"] * h * (1 if config["tie_word_embeddings"] else 2)
    return layers * block + embeddings + h  # + the final norm


def qwen_shapes() -> dict[str, ModelShape]:
    """``{size: ModelShape}`` for the Qwen2.5 sizes."""
    return {
        size: ModelShape.from_config(config, qwen2_parameters(config))
        for size, config in QWEN25.items()
    }


def declared_methods(names: list[str]) -> dict[str, tuple[Method, bool]]:
    """``{name: (descriptor, gradient_checkpointing default)}`` from the plugins and configs."""
    from framework.manager import build_plugin_manager

    plugins = build_plugin_manager(entry_points=False)
    out = {}
    for name in names:
        info = plugins.describe("method", name)
        if not isinstance(info, Method):
            raise SystemExit(f"method '{name}' declares no Method descriptor")
        out[name] = (info, default_checkpointing(name))
    return out


def default_tokens() -> int:
    """Tokens per step of the default config: ``data.batch_size`` x ``data.max_length``."""
    from omegaconf import OmegaConf

    data = OmegaConf.load(ROOT / "conf" / "data" / "demo.yaml")
    return int(data.batch_size) * int(data.max_length)


def render(method_names: list[str]) -> str:
    """The Markdown table (and its one-line legend)."""
    methods = declared_methods(method_names)
    tokens = default_tokens()
    head = "| model | parameters | method | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rows = [head, "|---|---:|---|" + "---:|" * len(COLUMNS)]
    for size, shape in qwen_shapes().items():
        for name, (method, checkpointing) in methods.items():
            cells = []
            for _heading, precision, device in COLUMNS:
                dtype = choose_dtype("auto", device, method, precision).value
                setup = TrainingSetup(dtype, precision, tokens, checkpointing)
                _load, train = training_memory(shape, method, setup)
                cells.append(f"{train / GiB:.1f}")
            rows.append(
                f"| Qwen2.5-{size} | {shape.parameters / 1e9:.2f}B | `{name}` | "
                + " | ".join(cells)
                + " |"
            )
    legend = (
        f"GiB to train, {tokens:,} tokens per step (the default `data.batch_size` x "
        "`data.max_length`), AdamW, each method's default `gradient_checkpointing`; "
        "computed by `python scripts/memory_table.py`."
    )
    return "\n".join(rows) + "\n\n" + legend + "\n"


def write_doc(table: str, doc: Path = DOC) -> None:
    """Replace the text between the table markers in ``doc``."""
    text = doc.read_text(encoding="utf-8")
    before, _, rest = text.partition(START)
    _, found, after = rest.partition(END)
    if not found:
        raise SystemExit(f"{doc} has no {START} ... {END} markers")
    doc.write_text(f"{before}{START}\n{table}{END}{after}", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="full,lora,qlora", help="comma-separated names")
    parser.add_argument("--write", action="store_true", help=f"update {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    table = render([m.strip() for m in args.methods.split(",") if m.strip()])
    if args.write:
        write_doc(table)
    print(table, end="")


if __name__ == "__main__":
    main()

"""The ``last_layers`` method: train only the last ``n_layers`` transformer blocks.

Everything else is frozen, so training is cheaper than full fine-tuning and what is saved is
small: just the tensors that trained (``last_layers.safetensors``), loaded back on top of a
fresh base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from framework.errors import ConfigError, ModelError

WEIGHTS = "last_layers.safetensors"


def blocks(model: Any) -> Any:
    """The model's stack of transformer blocks: its longest ``torch.nn.ModuleList``."""
    import torch

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not stacks:
        raise ModelError(
            f"{type(model).__name__} has no list of transformer blocks to train.",
            where="method=last_layers",
            hint="use method=full or method=lora for this model.",
        )
    return max(stacks, key=len)


def make_trainable(model: Any, n_layers: int, train_head: bool = False) -> Any:
    """Freeze ``model`` except its last ``n_layers`` blocks (and its output layer if asked)."""
    if int(n_layers) < 1:
        raise ConfigError(
            f"method.n_layers must be at least 1, got {n_layers}.",
            where="method.n_layers",
            hint="e.g. method.n_layers=2",
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for block in list(blocks(model))[-int(n_layers) :]:
        for p in block.parameters():
            p.requires_grad_(True)
    if train_head and model.get_output_embeddings() is not None:
        for p in model.get_output_embeddings().parameters():
            p.requires_grad_(True)
    return model


def save_trained(model: Any, tokenizer: Any, path: Path) -> Path:
    """Write the trainable tensors and the tokenizer under ``path``."""
    from safetensors.torch import save_file

    tensors = {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    save_file(tensors, str(Path(path) / WEIGHTS))
    tokenizer.save_pretrained(path)
    return Path(path)


def load_trained(base_model: Any, path: Path) -> Any:
    """Put the tensors :func:`save_trained` wrote into ``base_model``; return it."""
    from safetensors.torch import load_file

    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise ModelError(
            f"There is no {WEIGHTS} in {path}.",
            where=str(path),
            hint="this run was not trained with method=last_layers; pick its method.",
        )
    tensors = load_file(str(weights))
    unknown = sorted(set(tensors) - {name for name, _ in base_model.named_parameters()})
    if unknown:
        raise ModelError(
            f"{WEIGHTS} holds tensors the base model does not have: {unknown[:3]}...",
            where=str(weights),
            hint="evaluate with the same model=... the run was trained with.",
        )
    base_model.load_state_dict(tensors, strict=False)
    return base_model

"""Loading Hugging Face causal LMs from local folders, with clear errors.

Before anything is loaded, :func:`check_model_dir` makes sure the folder is a model
(``config.json`` that parses, weights, tokenizer files) and :func:`estimate_memory` warns,
with the numbers, when the model will likely not fit in the memory available.

Safety: code shipped with a model runs only with ``model.trust_remote_code=true``; weights
are read from safetensors when the folder has them (``.bin`` files go through
``torch.load(weights_only=True)`` inside transformers).

Chat template (``model.chat_template``): ``auto`` (default) uses the tokenizer's own; a
tokenizer without one gets tunesmith's ChatML template, with a warning saying so. ``chatml``
always uses the ChatML template; ``error`` refuses a tokenizer without a template; a path to
a ``.jinja`` file, or a Jinja string, is used as given. The template used is saved with the
adapter and with exported models.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework.data.chat import FALLBACK_CHAT_TEMPLATE, ensure_chat_template
from framework.descriptors import Method
from framework.errors import ModelError

log = logging.getLogger(__name__)

#: ``from_pretrained`` arguments the run's method asked for (``tunesmith_model_load_kwargs``),
#: in force while :func:`method_load_kwargs` is active; :func:`load_pretrained` applies them.
_METHOD_LOAD_KWARGS: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "tunesmith_method_load_kwargs", default=None
)
#: The run's :class:`Method` descriptor while :func:`method_load_kwargs` is active, for the
#: memory estimate of :func:`load_pretrained`.
_METHOD: ContextVar[Method | None] = ContextVar("tunesmith_method", default=None)


@contextmanager
def method_load_kwargs(
    kwargs: Mapping[str, Any] | None, method: Method | None = None
) -> Iterator[None]:
    """Make every :func:`load_pretrained` call inside the block use ``kwargs`` too.

    :meth:`framework.run.Run.build_base` wraps the ``tunesmith_build_model`` hook in this,
    with what the method's ``tunesmith_model_load_kwargs`` returned (e.g. a 4-bit
    ``quantization_config`` for ``method=qlora``) and the method's descriptor (what the
    memory estimate reads), so model plugins need not know methods.
    """
    token = _METHOD_LOAD_KWARGS.set(dict(kwargs or {}))
    method_token = _METHOD.set(method)
    try:
        yield
    finally:
        _METHOD.reset(method_token)
        _METHOD_LOAD_KWARGS.reset(token)


DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "auto": "auto",
}
#: Bytes per element of the dtypes safetensors headers name.
SAFETENSORS_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth", "*.gguf")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
)
GiB = 2**30
#: The file that makes a folder a PEFT adapter (rather than a whole model).
ADAPTER_CONFIG = "adapter_config.json"


def torch_dtype(name: str | None) -> Any:
    """A ``torch.dtype`` (or ``"auto"``) from a config string."""
    import torch

    key = DTYPES.get(str(name or "float32").lower())
    if key is None:
        raise ModelError(
            f"Unknown model dtype '{name}'.", where="model.dtype", hint=f"one of {sorted(DTYPES)}"
        )
    return key if key == "auto" else getattr(torch, key)


def _read_config_json(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(
            f"{file} is not a text file.",
            where=f"{file} (model.path={path})",
            hint="restore the model's config.json.",
        ) from exc
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"{file} is not valid JSON: {exc.msg}.",
            where=f"{file}:{exc.lineno} (model.path={path})",
            hint="restore the model's config.json (save_pretrained() writes it).",
        ) from exc
    if not isinstance(config, dict) or not (
        config.get("model_type") or config.get("architectures")
    ):
        raise ModelError(
            f"{file} does not say what kind of model this is (no model_type or architectures).",
            where=f"{file} (model.path={path})",
            hint="point model.path at a folder written by save_pretrained().",
        )
    return config


def is_adapter_folder(path: Path) -> bool:
    """Whether ``path`` holds a PEFT adapter (it has ``adapter_config.json``), not a model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def check_model_dir(path: Path) -> Path:
    """Raise :class:`ModelError` unless ``path`` is a usable Hugging Face model folder.

    Checks, in order: the folder exists; ``config.json`` exists, parses and names a model
    type; weight files exist; tokenizer files exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(
            f"The model folder '{path}' does not exist.",
            where=f"model.path={path}",
            hint="give a local folder with config.json and weights, or a Hub id (org/name).",
        )
    if not path.is_dir():
        raise ModelError(
            f"'{path}' is a file, not a model folder.",
            where=f"model.path={path}",
            hint="point model.path at the folder that holds config.json and the weights.",
        )
    if not (path / "config.json").is_file():
        raise ModelError(
            f"'{path}' is not a Hugging Face model folder: it has no config.json.",
            where=f"model.path={path}",
            hint="point model.path at the folder that save_pretrained() wrote.",
        )
    _read_config_json(path)
    if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
        raise ModelError(
            f"'{path}' has a config.json but no weights (*.safetensors or pytorch_model.bin).",
            where=f"model.path={path}",
            hint="copy the weight files into the folder, or point model.path at the full model.",
        )
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"'{path}' has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...).",
            where=f"model.path={path}",
            hint="save the tokenizer into the folder too (tokenizer.save_pretrained(path)).",
        )
    return path


# --------------------------------------------------------------------------- memory


def _safetensors_header(file: Path) -> dict[str, Any]:
    with file.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100 * 2**20:
            raise ValueError("header too large")
        return json.loads(f.read(size))


def count_weights(path: Path) -> tuple[int, int]:
    """``(parameters, bytes on disk)`` of the weights in a model folder.

    Exact for safetensors (read from the file headers, nothing loaded); for other formats
    the parameter count is the file size over 4 bytes (float32).
    """
    params = stored = 0
    tensors = sorted(path.glob("*.safetensors"))
    for file in tensors:
        try:
            header = _safetensors_header(file)
        except (OSError, ValueError, struct.error) as exc:
            raise ModelError(
                f"The weights file {file.name} is damaged: {exc}.",
                where=f"{file} (model.path={path})",
                hint="copy the model again; a file cut short by an interrupted copy looks like this.",
            ) from exc
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            n = math.prod(info.get("shape") or [1])
            params += n
            stored += n * SAFETENSORS_BYTES.get(str(info.get("dtype")), 4)
    if not tensors:
        for pattern in WEIGHT_PATTERNS:
            for file in path.glob(pattern):
                stored += file.stat().st_size
        params = stored // 4
    return params, stored


def available_memory(device: str) -> tuple[int, str]:
    """``(bytes free, what was measured)`` on ``device`` (``cuda`` or ``cpu``).

    On CPU this is the free RAM, or what the container's cgroup limit leaves if lower.
    """
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free), f"free on {torch.cuda.get_device_name()}"
    import psutil

    free = int(psutil.virtual_memory().available)
    where = "free RAM"
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):  # fmt: skip
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) - usage < free:
            free, where = int(limit) - usage, "left under the container's memory limit"
        break
    return max(free, 0), where


#: What the estimate assumes for a method that declared no :class:`Method` (a plugin still on
#: the old ``{"method": [name]}`` form, or a load outside a run): the most memory any method
#: needs, every weight training in ``model.dtype``. It can only over-warn, never under-warn.
CONSERVATIVE_METHOD = Method("(undeclared)", kind="full")

#: Bytes per trainable parameter beyond its weight: its gradient and AdamW's two states.
OPTIMIZER_BYTES = 12


@dataclass
class MemoryEstimate:
    """What loading and training a model will take, against what is free."""

    parameters: int
    load_bytes: int
    train_bytes: int
    free_bytes: int
    free_what: str
    device: str

    def fits(self) -> bool:
        return self.train_bytes <= self.free_bytes

    def describe(self, method: str) -> str:
        return (
            f"{self.parameters / 1e6:,.0f}M parameters: about {self.load_bytes / GiB:.1f} GiB "
            f"to load and {self.train_bytes / GiB:.1f} GiB to train with method={method}, "
            f"but {self.free_bytes / GiB:.1f} GiB is {self.free_what} ({self.device})"
        )


def estimate_memory(path: Path, cfg: DictConfig, method: Method | None = None) -> MemoryEstimate:
    """Estimate the memory to load and train the model in ``path`` with ``cfg``'s settings.

    Everything about the method comes from its descriptor: loading takes parameters x bytes
    of ``model.dtype``, or ``method.base_bits / 8`` when the method holds the base quantized
    (QLoRA: half a byte). Training adds, for the share of parameters that train
    (``method.share``: 1.0 for ``kind=full``...), their gradient and two AdamW states in
    float32 (12 bytes each), plus activations: batch x length x hidden x layers x 34 bytes (no
    gradient checkpointing). A rough bound, meant to warn, not to block.

    Args:
        path: a model folder (:func:`check_model_dir` passed).
        cfg: the run config (``model.dtype``, ``data.batch_size``, ``data.max_length``,
            ``trainer.accelerator``).
        method: the run's method descriptor (``run.plugins.describe("method", name)``).
            ``None``: :data:`CONSERVATIVE_METHOD`, as if every weight trained.
    """
    method = method if isinstance(method, Method) else CONSERVATIVE_METHOD
    config = _read_config_json(path)
    params, stored = count_weights(path)
    dtype = str(cfg.model.get("dtype") or "float32").lower()
    per_param: float = {"float32": 4, "fp32": 4}.get(dtype, 2)
    if dtype == "auto":
        per_param = max(1, round(stored / max(params, 1)))
    if method.base_bits:
        per_param = method.base_bits / 8
    load = int(params * per_param)
    train = load + int(params * method.share * OPTIMIZER_BYTES)
    data = cfg.get("data") or {}
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    tokens = int(data.get("batch_size") or 1) * int(data.get("max_length") or 512)
    train += tokens * hidden * layers * 34
    device = "cpu"
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    if accelerator in ("auto", "gpu", "cuda"):
        import torch

        if torch.cuda.is_available():
            device = "cuda"
    free, what = available_memory(device)
    return MemoryEstimate(params, load, train, free, what, device)


_warned: set[str] = set()


def warn_if_too_large(
    path: Path, cfg: DictConfig, method: Method | None = None
) -> MemoryEstimate | None:
    """Log a warning with the numbers when the model will likely not fit; once per folder.

    Args:
        path: the model folder.
        cfg: the run config.
        method: the run's method descriptor (see :func:`estimate_memory`; ``None``: the
            conservative default).
    """
    try:
        est = estimate_memory(path, cfg, method)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop a run
        log.debug("memory estimate failed: %s", exc)
        return None
    key = str(Path(path).resolve())
    if not est.fits() and key not in _warned:
        _warned.add(key)
        name = str((cfg.get("method") or {}).get("name", "?"))
        if not isinstance(method, Method):
            name += " (no method descriptor given: estimated as if every weight trained)"
        advice = "model.dtype=bfloat16; a smaller data.batch_size or data.max_length; or a "
        advice += "smaller model."
        if not isinstance(method, Method) or method.kind != "adapter":
            advice = "an adapter method (method=lora) instead of training the base weights; " + (
                advice
            )
        elif not method.base_bits:
            advice = "a quantized base (method=qlora); " + advice
        log.warning(
            "This model will likely not fit in memory: %s.\n  To need less: %s",
            est.describe(name),
            advice,
        )
    return est


# --------------------------------------------------------------------------- loading


def apply_chat_template_choice(tokenizer: Any, choice: Any, path: Path) -> Any:
    """Set the tokenizer's chat template according to ``model.chat_template`` (module docs)."""
    choice = "auto" if choice in (None, "") else str(choice)
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if choice == "chatml":
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    elif choice == "error":
        if not has_own:
            raise ModelError(
                f"The tokenizer in '{path}' has no chat template, and model.chat_template=error "
                "asks not to fall back.",
                where="model.chat_template",
                hint="give one: model.chat_template=/path/to/template.jinja, or accept "
                "tunesmith's ChatML template with model.chat_template=auto.",
            )
    elif choice != "auto":
        template_file = Path(choice).expanduser()
        if "{%" in choice or "{{" in choice:
            tokenizer.chat_template = choice
        elif template_file.is_file():
            tokenizer.chat_template = template_file.read_text(encoding="utf-8")
        else:
            raise ModelError(
                f"model.chat_template='{choice}' is neither auto, chatml, error, a Jinja "
                "template nor an existing file.",
                where="model.chat_template",
                hint="use auto | chatml | error | /path/to/template.jinja",
            )
    elif not has_own:
        log.warning(
            "The tokenizer in %s has no chat template: tunesmith uses its ChatML template "
            "(<|im_start|>role ... <|im_end|>) for training, evaluation and export, and saves "
            "it with the model. Set model.chat_template=/path/to/template.jinja to use "
            "another, or model.chat_template=error to stop instead.",
            path,
        )
    return ensure_chat_template(tokenizer)


def load_pretrained(path: Path, cfg: DictConfig, **extra: Any) -> tuple[Any, Any]:
    """Load model and tokenizer from a local folder, honouring ``model.*`` options.

    Extra keyword arguments go to ``AutoModelForCausalLM.from_pretrained``, on top of those
    the run's method asked for through :func:`method_load_kwargs` (e.g. the 4-bit
    quantization config of ``method=qlora``). The memory warning reads the method descriptor
    given there (none outside :meth:`framework.run.Run.build_base`: the conservative default).

    Raises:
        ModelError: the folder is not a usable model, or loading it failed.
    """
    path = check_model_dir(path)
    warn_if_too_large(path, cfg, _METHOD.get())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_cfg = cfg.model
    trust = bool(model_cfg.get("trust_remote_code", False))
    has_safetensors = any(path.glob("*.safetensors"))
    kwargs = {
        "dtype": torch_dtype(model_cfg.get("dtype")),
        "trust_remote_code": trust,
        "use_safetensors": True if has_safetensors else None,
        **(_METHOD_LOAD_KWARGS.get() or {}),
        **extra,
    }
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ModelError:
        raise
    except MemoryError as exc:
        raise ModelError(
            f"Out of memory while loading the model in '{path}'.",
            where=f"model.path={path}",
            hint="use model.dtype=bfloat16, a smaller model, or a machine with more memory.",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; all are the folder's
        remote = "trust_remote_code" in str(exc)
        raise ModelError(
            f"Could not load the model in '{path}': {type(exc).__name__}: {exc}".strip(),
            where=f"model.path={path}",
            hint="this model ships its own code: set model.trust_remote_code=true only if you "
            "trust its source."
            if remote
            else "check that the folder holds a complete causal-LM checkpoint (config.json, "
            "weights, tokenizer) from save_pretrained().",
        ) from exc
    tokenizer = apply_chat_template_choice(tokenizer, model_cfg.get("chat_template"), path)
    return model, tokenizer


def save_model(model: Any, tokenizer: Any, path: Path) -> Path:
    """Save a whole model (safetensors) and its tokenizer under ``path``; return ``path``."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path

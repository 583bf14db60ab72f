"""Loading Hugging Face causal LMs from local folders, with clear errors.

Before anything is loaded, :func:`check_model_dir` makes sure the folder is a model
(``config.json`` that parses, weights, tokenizer files) and :func:`warn_if_too_large` says,
with the numbers, whether the model will fit in the memory available (and, when it will not,
what each declared method would need). ``model.dtype: auto`` (the default) is resolved for
the machine by :mod:`framework.model.hardware` (:func:`resolve_dtype`).

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework.data.chat import FALLBACK_CHAT_TEMPLATE, ensure_chat_template
from framework.descriptors import Method
from framework.errors import ModelError
from framework.model import hardware

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


def resolve_dtype(cfg: DictConfig, method: Method | None = None) -> Any:
    """The ``torch.dtype`` to load weights in: ``model.dtype``, ``auto`` resolved.

    ``auto`` (the default) is chosen by :mod:`framework.model.hardware` for this machine,
    the run's precision and ``method`` (logged once, with the reason); any other value is
    used as given. On a CPU run this also sets torch's thread count
    (:func:`framework.model.hardware.configure_threads`).

    Raises:
        ModelError: ``model.dtype`` names no dtype.
    """
    precision, device = hardware.run_precision(cfg.get("trainer"))
    choice = hardware.run_dtype(cfg, method if isinstance(method, Method) else None)
    dtype = torch_dtype(choice.value)  # an unknown name stops here, before any work
    for made in (precision, choice):
        if made.automatic:
            hardware.log_choice(made)
    if device.kind == "cpu":
        hardware.configure_threads()
    return dtype


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

#: Bytes per element of the weight dtypes ``model.dtype`` names.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Bytes per trainable adapter parameter: PEFT keeps adapters in float32, so the weight, its
#: gradient and AdamW's two states take 4 bytes each.
ADAPTER_BYTES = 16
#: Activation bytes kept per token, layer and unit of hidden size for the backward pass, in
#: 16-bit compute (Korthikanti et al. 2022, "Reducing activation recomputation": 34 s*b*h per
#: layer, attention scores left out as SDPA/flash attention does not keep them); float32
#: compute keeps twice as much.
ACTIVATION_BYTES_16 = 34
#: Bytes per token and vocabulary entry for the logits: float32 logits and their gradient.
LOGIT_BYTES = 8

#: What the process takes besides the model: Python, torch and its libraries (or a CUDA
#: context), tokenizer, data. Measured on SmolLM2 runs: about 0.5-0.7 GiB of resident memory.
RUNTIME_BYTES = 512 * 2**20


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs to know about a model.

    Attributes:
        parameters: every parameter (tied weights once).
        hidden_size: the width of the residual stream.
        num_layers: transformer blocks.
        vocab_size: vocabulary entries (the logits' width).
        embedding_parameters: parameters of the input embeddings and the output head (once
            when tied): a 4-bit method leaves them unquantized.
    """

    parameters: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    embedding_parameters: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], parameters: int) -> ModelShape:
        """From a ``config.json`` mapping and the parameter count of the weights."""
        hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
        vocab = int(config.get("vocab_size") or 0)
        tied = bool(config.get("tie_word_embeddings", True))
        return cls(
            parameters=int(parameters),
            hidden_size=hidden,
            num_layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 0),
            vocab_size=vocab,
            embedding_parameters=min(int(parameters), vocab * hidden * (1 if tied else 2)),
        )


@dataclass(frozen=True)
class TrainingSetup:
    """How a run trains, as far as memory goes.

    Attributes:
        dtype: the weights' dtype (``model.dtype`` resolved: float32 | bfloat16 | float16).
        precision: ``trainer.precision`` resolved (``32-true``, ``bf16-mixed``...).
        tokens: tokens per optimizer micro-batch (``data.batch_size`` x length).
        gradient_checkpointing: activations are recomputed in the backward pass.
    """

    dtype: str
    precision: str
    tokens: int
    gradient_checkpointing: bool = False


def training_memory(shape: ModelShape, method: Method, setup: TrainingSetup) -> tuple[int, int]:
    """``(bytes to load, bytes to train)`` for ``shape`` trained by ``method`` with ``setup``.

    Weights: parameters x bytes of ``setup.dtype``; a method that holds the base quantized
    (``method.base_bits``) stores all but the embeddings in that many bits. The trainable
    share (``method.share``) adds, for an adapter, 16 bytes per parameter (float32 weight,
    gradient, two AdamW states); for weights of the base itself (``kind`` full/partial), a
    gradient and two AdamW states in the weights' dtype, plus the 16-bit copies mixed
    precision caches. Activations: tokens x hidden x layers x 34 bytes in 16-bit compute (x2
    in float32); with gradient checkpointing only each block's input and one block's
    activations. Logits: tokens x vocabulary x 8 bytes. Plus :data:`RUNTIME_BYTES`. A rough
    bound, meant to warn: on SmolLM2 (demo settings, CPU) it came within 10% of the measured
    peak for full and LoRA, and under it for QLoRA (whose peak is set while quantizing).
    """
    weight_bytes = DTYPE_BYTES.get(setup.dtype, 4)
    params = shape.parameters
    if method.base_bits:
        embeddings = shape.embedding_parameters
        load = int((params - embeddings) * method.base_bits / 8 + embeddings * weight_bytes)
    else:
        load = params * weight_bytes
    trainable = int(params * method.share)
    mixed = setup.precision.endswith("-mixed")
    if method.kind == "adapter":
        state = trainable * ADAPTER_BYTES
    else:
        state = trainable * 3 * weight_bytes
        if mixed and weight_bytes == 4:
            state += trainable * 2  # autocast's cached 16-bit copies of the trained weights
    compute_bytes = 2 if mixed or "16" in setup.precision else 4
    per_layer = ACTIVATION_BYTES_16 // 2 * compute_bytes  # bytes per token per hidden unit
    width = setup.tokens * shape.hidden_size
    if setup.gradient_checkpointing:
        activations = width * (shape.num_layers * compute_bytes + per_layer)
    else:
        activations = width * shape.num_layers * per_layer
    logits = setup.tokens * shape.vocab_size * LOGIT_BYTES
    return load, RUNTIME_BYTES + load + state + activations + logits


def model_shape(path: Path) -> ModelShape:
    """The :class:`ModelShape` of the model folder ``path`` (nothing is loaded)."""
    params, _stored = count_weights(path)
    return ModelShape.from_config(_read_config_json(path), params)


def training_setup(cfg: DictConfig, method: Method, device: Any = None) -> TrainingSetup:
    """The :class:`TrainingSetup` of run config ``cfg`` (``auto`` resolved for ``device``).

    Args:
        cfg: the run config (``model.dtype``, ``trainer.precision``, ``data.batch_size``,
            ``data.max_length``/``pack_length``, ``method.gradient_checkpointing``).
        method: the method descriptor the dtype is chosen for.
        device: a :class:`framework.model.hardware.Device`; ``None``: this machine's.
    """
    trainer = cfg.get("trainer") or {}
    if device is None:
        device = hardware.detect(trainer.get("accelerator", "auto"))
    precision = hardware.choose_precision(trainer.get("precision", "auto"), device).value
    dtype = hardware.choose_dtype((cfg.get("model") or {}).get("dtype"), device, method, precision)
    data = cfg.get("data") or {}
    length = int(data.get("pack_length") or data.get("max_length") or 512)
    return TrainingSetup(
        dtype=DTYPES.get(str(dtype.value).lower(), "float32"),
        precision=str(precision),
        tokens=int(data.get("batch_size") or 1) * length,
        gradient_checkpointing=bool((cfg.get("method") or {}).get("gradient_checkpointing")),
    )


def format_bytes(size: float) -> str:
    """``1.5 GiB``, or ``310 MiB`` below a tenth of a GiB."""
    if size >= GiB / 10:
        return f"{size / GiB:.1f} GiB"
    return f"{size / 2**20:.0f} MiB"


@dataclass
class MemoryEstimate:
    """What loading and training a model will take, against what is free."""

    parameters: int
    load_bytes: int
    train_bytes: int
    free_bytes: int
    free_what: str
    device: str
    dtype: str = "float32"
    precision: str = "32-true"

    def fits(self) -> bool:
        return self.train_bytes <= self.free_bytes

    def describe(self, method: str) -> str:
        return (
            f"{self.parameters / 1e6:,.0f}M parameters: about {format_bytes(self.load_bytes)} "
            f"to load and {format_bytes(self.train_bytes)} to train with method={method} "
            f"({self.dtype} weights, trainer.precision={self.precision}); "
            f"{format_bytes(self.free_bytes)} is {self.free_what} ({self.device})"
        )


def estimate_memory(path: Path, cfg: DictConfig, method: Method | None = None) -> MemoryEstimate:
    """Estimate the memory to load and train the model in ``path`` with ``cfg``'s settings.

    Everything about the method comes from its descriptor (:func:`training_memory`); the
    weights' dtype and the precision are ``cfg``'s, ``auto`` resolved for this machine
    (:mod:`framework.model.hardware`).

    Args:
        path: a model folder (:func:`check_model_dir` passed).
        cfg: the run config (``model.dtype``, ``trainer.*``, ``data.batch_size``,
            ``data.max_length``, ``method.gradient_checkpointing``).
        method: the run's method descriptor (``run.plugins.describe("method", name)``).
            ``None``: :data:`CONSERVATIVE_METHOD`, as if every weight trained.
    """
    method = method if isinstance(method, Method) else CONSERVATIVE_METHOD
    shape = model_shape(path)
    device = hardware.detect((cfg.get("trainer") or {}).get("accelerator", "auto"))
    setup = training_setup(cfg, method, device)
    load, train = training_memory(shape, method, setup)
    free, what = available_memory("cuda" if device.kind == "cuda" else "cpu")
    return MemoryEstimate(
        shape.parameters, load, train, free, what, device.kind, setup.dtype, setup.precision
    )


def declared_methods(cfg: DictConfig) -> list[Method]:
    """Every method the run's plugins declare (in-tree, installed, ``cfg.plugins``)."""
    from framework.manager import build_plugin_manager

    try:
        plugins = build_plugin_manager(extra=list(cfg.get("plugins") or []))
    except Exception as exc:  # noqa: BLE001 - advice must never stop a run
        log.debug("could not list the methods: %s", exc)
        return []
    found = (plugins.describe("method", name) for name in plugins.names("method"))
    return [m for m in found if isinstance(m, Method)]


#: The in-tree method configs (the checkout's ``conf/method``, as ``framework.resolvers.ROOT_DIR``
#: finds the checkout; not imported from there: that module reaches back here).
METHOD_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "method"


def default_checkpointing(name: str) -> bool:
    """``gradient_checkpointing`` as the method's own config file sets it
    (``conf/method/<name>.yaml``; ``False`` when there is none: a plugin's own config)."""
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.load(METHOD_CONF_DIR / f"{name}.yaml")
        return bool(node.get("gradient_checkpointing", False))
    except Exception:  # noqa: BLE001 - no such file, or one that does not parse: not known
        return False


def method_alternatives(
    path: Path, cfg: DictConfig, methods: list[Method], current: str | None = None
) -> list[tuple[list[str], int]]:
    """``([method names], bytes to train)`` for every declared method, least memory first.

    Each is estimated with ``cfg``'s settings, and with gradient checkpointing where the
    method's own config turns it on (QLoRA's recipe). Methods that need the same memory share
    one entry; the method named ``current`` is left out.
    """
    shape = model_shape(path)
    device = hardware.detect((cfg.get("trainer") or {}).get("accelerator", "auto"))
    by_bytes: dict[int, list[str]] = {}
    for method in methods:
        if method.name == current:
            continue
        setup = training_setup(cfg, method, device)
        if not setup.gradient_checkpointing and default_checkpointing(method.name):
            setup = replace(setup, gradient_checkpointing=True)
        _load, train = training_memory(shape, method, setup)
        by_bytes.setdefault(train, []).append(method.name)
    return sorted(((sorted(names), size) for size, names in by_bytes.items()), key=lambda x: x[1])


_warned: set[str] = set()


def _advice(path: Path, cfg: DictConfig, est: MemoryEstimate) -> str:
    """What would need less: the other declared methods with their estimates, then settings."""
    lines = []
    current = str((cfg.get("method") or {}).get("name", ""))
    alternatives = method_alternatives(path, cfg, declared_methods(cfg), current)
    if alternatives:
        shown = [
            " / ".join(f"method={n}" for n in names)
            + f" ~{format_bytes(size)}"
            + (" (fits)" if size <= est.free_bytes else "")
            for names, size in alternatives
        ]
        lines.append("By method (same model, dtype and batch): " + ", ".join(shown) + ".")
    other = ["a smaller data.batch_size or data.max_length"]
    if est.dtype == "float32":
        other.insert(0, "model.dtype=bfloat16 (half the weights' memory)")
    if not (cfg.get("method") or {}).get("gradient_checkpointing"):
        other.append("method.gradient_checkpointing=true")
    lines.append(f"Also: {'; '.join(other)}; or a smaller model.")
    return "\n  ".join(lines)


def warn_if_too_large(
    path: Path, cfg: DictConfig, method: Method | None = None
) -> MemoryEstimate | None:
    """Say before loading whether the model will fit; warn with what would when it will not.

    The estimate is logged once per folder: at INFO when it fits, as a WARNING naming the
    declared methods that would fit (:func:`method_alternatives`) when it does not.

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
    if key in _warned:
        return est
    _warned.add(key)
    declared = isinstance(method, Method)
    name = str((cfg.get("method") or {}).get("name", "?"))
    if not declared:
        name += " (no method descriptor given: estimated as if every weight trained)"
    if est.fits():
        log.info("Memory: %s: it should fit.", est.describe(name))
        return est
    try:
        advice = _advice(path, cfg, est)
    except Exception as exc:  # noqa: BLE001 - advice must never stop a run
        log.debug("memory advice failed: %s", exc)
        advice = "an adapter method, a smaller batch, or a smaller model."
    log.warning("This model will likely not fit in memory: %s.\n  %s", est.describe(name), advice)
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
    dtype = resolve_dtype(cfg, _METHOD.get())
    warn_if_too_large(path, cfg, _METHOD.get())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_cfg = cfg.model
    trust = bool(model_cfg.get("trust_remote_code", False))
    has_safetensors = any(path.glob("*.safetensors"))
    kwargs = {
        "dtype": dtype,
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

"""What this machine computes fast: the training precision, the weights' dtype and CPU threads.

``trainer.precision: auto`` and ``model.dtype: auto`` (the defaults) are resolved here and
nowhere else; the train stage (:func:`framework.train.stage.build_trainer`) and model loading
(:func:`framework.model.loading.load_pretrained`) both ask this module. An explicit value in
the config always wins and is used as given.

The rules (docs/methods.md, "Precision and dtype: auto"):

==============================  ==================  =========================================
device                          trainer.precision   model.dtype (adapter / full, partial)
==============================  ==================  =========================================
CUDA GPU with bfloat16          ``bf16-mixed``      ``bfloat16`` / ``float32``
older CUDA GPU (T4, V100...)    ``16-mixed``        ``float16`` / ``float32``
CPU with AVX512-BF16 or AMX     ``bf16-mixed``      ``float32`` / ``float32``
any other CPU, Apple GPU (MPS)  ``32-true``         ``float32`` / ``float32``
==============================  ==================  =========================================

A CPU without native bfloat16 emulates it: on a 2-core Xeon with AVX-512 but no AVX512-BF16,
``bf16-mixed`` trained SmolLM2 at 86 tokens/s and ``32-true`` at 207 (issue 17). Weights
that train stay float32 under mixed precision (it computes in 16 bits and updates float32
weights); only a frozen base on a GPU is held in 16 bits (half the memory), and PEFT keeps the
adapter itself in float32. On a CPU the float32 base with ``bf16-mixed`` measured fastest.

Every choice is logged once with its reason, e.g. ``trainer.precision=auto -> 32-true: this
CPU (Intel Xeon ...) has no AVX512-BF16/AMX``, and the train stage records it in
``train_summary.json`` (``hardware``) so a resumed run keeps it.

The detection reads plain inputs (:func:`cpu_flags`, :func:`cpu_name`,
:func:`torch_cpu_capability`, :func:`cuda_info`, :func:`mps_available`) that tests replace.
"""

from __future__ import annotations

import logging
import math
import os
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.descriptors import Method

log = logging.getLogger(__name__)

#: CPU flags (``/proc/cpuinfo``) that mean the CPU computes bfloat16 matmuls natively.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: torch CPU capabilities below AVX-512: torch's kernels then never use the bf16 instructions.
SLOW_TORCH_CAPABILITIES = frozenset({"DEFAULT", "NO AVX", "AVX", "AVX2"})
#: ``trainer.precision`` values that hold the weights themselves in 16 bits (Lightning
#: converts the model), and the dtype each means.
TRUE_HALF = {"bf16-true": "bfloat16", "bf16": "bfloat16", "16-true": "float16", "16": "float16"}
#: Environment variables through which a user sets the CPU thread count (left as they are).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: ``config key -> value`` chosen when a run started, honoured on resume (:func:`pinned`).
_PINNED: ContextVar[Mapping[str, str] | None] = ContextVar("tunesmith_pinned", default=None)
_logged: set[str] = set()


# --------------------------------------------------------------------------- what is there
def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (``None`` where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def torch_cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to (``AVX512``, ``AVX2``...)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old torch: no cross-check
        return "unknown"


@dataclass(frozen=True)
class CudaInfo:
    """The first CUDA device: its name, compute capability and whether it has bfloat16."""

    name: str
    capability: tuple[int, int]
    bf16: bool


def cuda_info() -> CudaInfo | None:
    """The CUDA device torch would use, or ``None`` without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return CudaInfo(
        name=torch.cuda.get_device_name(),
        capability=tuple(torch.cuda.get_device_capability()),  # type: ignore[arg-type]
        bf16=bool(torch.cuda.is_bf16_supported()),
    )


def mps_available() -> bool:
    """Whether an Apple GPU (MPS) is there."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@dataclass(frozen=True)
class Device:
    """The device a run computes on, as far as precision is concerned.

    Attributes:
        kind: ``cuda``, ``mps`` or ``cpu``.
        name: the GPU's or CPU's model name.
        bf16: it computes bfloat16 natively.
        fp16: it computes float16 fast (CUDA GPUs).
        evidence: why ``bf16`` is what it is, for the log (``has AVX512-BF16``...).
    """

    kind: str
    name: str
    bf16: bool
    fp16: bool
    evidence: str


def _cpu_device() -> Device:
    name = cpu_name()
    flags = cpu_flags()
    capability = torch_cpu_capability()
    if flags is None:  # no /proc/cpuinfo (macOS, Windows): torch's own CPU probe
        import torch

        probe = getattr(torch, "cpu", None)
        try:
            found = [
                label
                for label, check in (("AVX512-BF16", "_is_avx512_bf16_supported"),
                                     ("AMX", "_is_amx_tile_supported"))
                if getattr(probe, check)()
            ]  # fmt: skip
        except Exception:  # noqa: BLE001 - private API: absent means "not known"
            found = []
        flags = {"avx512_bf16"} if found else set()
    native = sorted(f for f in BF16_CPU_FLAGS if f in flags)
    if not native:
        return Device("cpu", name, False, False, "has no AVX512-BF16/AMX")
    if capability.upper() in SLOW_TORCH_CAPABILITIES:
        return Device(
            "cpu",
            name,
            False,
            False,
            f"has {'/'.join(native)} but torch runs its {capability} kernels "
            "(ATEN_CPU_CAPABILITY?), which do not use them",
        )
    return Device("cpu", name, True, False, f"computes bfloat16 natively ({', '.join(native)})")


def detect(accelerator: Any = "auto") -> Device:
    """The device ``trainer.accelerator`` leads to, the way Lightning picks it.

    ``auto``: a CUDA GPU if there is one, else an Apple GPU, else the CPU; ``gpu``: CUDA or
    MPS; ``cuda`` / ``mps`` / ``cpu``: that one.
    """
    wanted = str(accelerator or "auto").lower()
    if wanted in ("auto", "gpu", "cuda"):
        info = cuda_info()
        if info is not None:
            cc = f"compute capability {info.capability[0]}.{info.capability[1]}"
            evidence = (
                f"computes bfloat16 natively ({cc})" if info.bf16 else f"has no bfloat16 ({cc})"
            )
            return Device("cuda", info.name, info.bf16, True, evidence)
    if wanted in ("auto", "gpu", "mps") and mps_available():
        return Device("mps", "Apple GPU (MPS)", False, False, "Apple GPU")
    return _cpu_device()


# --------------------------------------------------------------------------- choices
@dataclass(frozen=True)
class Choice:
    """One resolved setting.

    Attributes:
        key: the config key (``trainer.precision``, ``model.dtype``).
        value: what is used.
        reason: why, in words.
        automatic: it was ``auto`` in the config (``False``: the user's own value).
    """

    key: str
    value: str
    reason: str
    automatic: bool

    def describe(self) -> str:
        if not self.automatic:
            return f"{self.key}={self.value} (set in the config)"
        return f"{self.key}=auto -> {self.value}: {self.reason}"


def _is_auto(value: Any) -> bool:
    return value is None or str(value).strip().lower() in ("auto", "")


def _device_words(device: Device) -> str:
    if device.kind == "cpu":
        return f"this CPU ({device.name})"
    return device.name


def choose_precision(requested: Any, device: Device) -> Choice:
    """``trainer.precision``: the user's value, else what ``device`` computes fast.

    Args:
        requested: ``cfg.trainer.precision`` (``auto``/``None``: choose).
        device: from :func:`detect`.
    """
    key = "trainer.precision"
    pin = (_PINNED.get() or {}).get(key)
    if not _is_auto(requested):
        return Choice(key, str(requested), "set in the config", automatic=False)
    if pin:
        return Choice(key, pin, "chosen when this run started (kept on resume)", automatic=True)
    words = _device_words(device)
    if device.bf16:
        return Choice(key, "bf16-mixed", f"{words} {device.evidence}", automatic=True)
    if device.kind == "cuda":
        return Choice(
            key,
            "16-mixed",
            f"{words} {device.evidence}: float16 mixed precision with loss scaling",
            automatic=True,
        )
    if device.kind == "mps":
        return Choice(
            key,
            "32-true",
            f"{words}: float32 (try trainer.precision=16-mixed to compare)",
            automatic=True,
        )
    return Choice(
        key,
        "32-true",
        f"{words} {device.evidence}: bfloat16 would be emulated, slower than float32",
        automatic=True,
    )


def choose_dtype(requested: Any, device: Device, method: Method | None, precision: str) -> Choice:
    """``model.dtype``: the user's value, else what suits the device, method and precision.

    Args:
        requested: ``cfg.model.dtype`` (``auto``/``None``: choose).
        device: from :func:`detect`.
        method: the run's method descriptor (``None``: not known, e.g. a model loaded to
            serve; treated like a method whose weights train).
        precision: the resolved ``trainer.precision`` (:func:`choose_precision`).
    """
    key = "model.dtype"
    pin = (_PINNED.get() or {}).get(key)
    if not _is_auto(requested):
        return Choice(key, str(requested), "set in the config", automatic=False)
    if pin:
        return Choice(key, pin, "chosen when this run started (kept on resume)", automatic=True)
    precision = str(precision)
    if precision in TRUE_HALF:
        dtype = TRUE_HALF[precision]
        return Choice(
            key, dtype, f"trainer.precision={precision} holds the weights in {dtype}", True
        )
    adapter = isinstance(method, Method) and method.kind == "adapter"
    if adapter and device.kind == "cuda" and precision.endswith("-mixed"):
        dtype = "bfloat16" if precision.startswith("bf16") else "float16"
        return Choice(
            key,
            dtype,
            f"method={method.name} trains an adapter on a frozen base: the base in {dtype} "  # type: ignore[union-attr]
            "(half the memory of float32), the adapter in float32",
            automatic=True,
        )
    if isinstance(method, Method) and not adapter:
        why = (
            f"method={method.name} trains the base weights: they stay float32 "
            f"(trainer.precision={precision} computes in 16 bits where mixed)"
        )
    elif device.kind == "cpu" and precision.endswith("-mixed"):
        why = "on a CPU a float32 base under bf16-mixed trained fastest"
    else:
        why = f"trainer.precision={precision} computes in float32"
    return Choice(key, "float32", why, automatic=True)


def log_choice(choice: Choice) -> None:
    """Log ``choice`` once per process (a model loaded twice says it once)."""
    text = choice.describe()
    if text in _logged:
        return
    _logged.add(text)
    log.info("%s", text)


def run_precision(trainer_cfg: Mapping[str, Any] | None) -> tuple[Choice, Device]:
    """The run's ``trainer.precision`` (resolved) and the device it is for."""
    trainer_cfg = trainer_cfg or {}
    device = detect(trainer_cfg.get("accelerator", "auto"))
    return choose_precision(trainer_cfg.get("precision", "auto"), device), device


def run_dtype(cfg: Any, method: Method | None) -> Choice:
    """The run's ``model.dtype`` (resolved) for a run config and its method descriptor."""
    precision, device = run_precision(cfg.get("trainer"))
    model_cfg = cfg.get("model") or {}
    return choose_dtype(model_cfg.get("dtype", "auto"), device, method, precision.value)


@contextmanager
def pinned(values: Mapping[str, str] | None) -> Iterator[None]:
    """Inside the block, ``auto`` resolves to ``values`` (``{config key: value}``) where given.

    The train stage pins what an interrupted attempt of the same run chose, so a resumed run
    keeps its precision even on another machine.
    """
    token = _PINNED.set(dict(values or {}))
    try:
        yield
    finally:
        _PINNED.reset(token)


# --------------------------------------------------------------------------- threads
def physical_cores(cpus: set[int]) -> int:
    """How many physical cores the logical CPUs ``cpus`` belong to (hyper-threads count once).

    Reads ``/sys/devices/system/cpu/cpuN/topology``; where that is missing, every CPU counts.
    """
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return len(cores) or len(cpus)


def cpu_quota() -> int | None:
    """The container's CPU limit (cgroup ``cpu.max``), rounded up; ``None``: no limit."""
    for path, parse in (
        ("/sys/fs/cgroup/cpu.max", lambda t: t.split()[:2]),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), None]),
    ):
        try:
            quota, period = parse(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        if period is None:
            try:
                period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
            except OSError:
                return None
        try:
            return max(1, math.ceil(int(quota) / int(period)))
        except (ValueError, ZeroDivisionError):
            return None
    return None


def choose_threads() -> tuple[int | None, str]:
    """``(torch threads, why)``: ``None`` when the user's setting stands.

    The physical cores this process may run on (``os.sched_getaffinity``), at most the
    container's CPU limit: one torch thread per core, hyper-threads left out (two threads on
    one core only wait on each other in matmuls).
    """
    for variable in THREAD_VARIABLES:
        if os.environ.get(variable, "").strip():
            return None, f"{variable}={os.environ[variable]} is set"
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows: torch's own default stands
        return None, "torch's default (no CPU affinity on this platform)"
    count = physical_cores(cpus)
    why = f"one per physical core this process may use, of {len(cpus)} logical CPUs"
    quota = cpu_quota()
    if quota is not None and quota < count:
        count, why = quota, f"the container's CPU limit is {quota}"
    return count, why


def configure_threads() -> int:
    """Set torch's CPU threads by :func:`choose_threads`, log it once; return the count."""
    import torch

    wanted, why = choose_threads()
    if wanted is not None and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    threads = torch.get_num_threads()
    text = f"CPU threads: {threads} ({why}; OMP_NUM_THREADS=N sets another number)"
    if text not in _logged:
        _logged.add(text)
        log.info("%s", text)
    return threads


def record(precision: Choice, dtype: Choice | None, device: Device, threads: int | None) -> dict:
    """What a run's ``train_summary.json`` keeps under ``hardware``."""
    out: dict[str, Any] = {
        "device": device.kind,
        "device_name": device.name,
        "native_bf16": device.bf16,
        "precision": precision.value,
        "precision_reason": precision.describe(),
    }
    if dtype is not None:
        out.update(dtype=dtype.value, dtype_reason=dtype.describe())
    if threads is not None:
        out["cpu_threads"] = threads
    return out


def pins_from(hardware: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``{config key: value}`` to pin from a recorded ``hardware`` entry (:func:`record`)."""
    hardware = hardware or {}
    pins = {}
    if hardware.get("precision"):
        pins["trainer.precision"] = str(hardware["precision"])
    if hardware.get("dtype"):
        pins["model.dtype"] = str(hardware["dtype"])
    return pins

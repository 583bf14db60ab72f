"""Hardware-aware defaults: ``trainer.precision: auto`` and ``model.dtype: auto`` follow the
device (issue 17, symptom 1); an explicit value always wins; a resumed run keeps its choice."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from framework.descriptors import Method
from framework.model import hardware
from framework.model.hardware import CudaInfo, choose_dtype, choose_precision, detect
from tests.conftest import TINY, compose_config

LORA = Method("lora", kind="adapter")
FULL = Method("full", kind="full")
FREEZE = Method("freeze", kind="partial")


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """``machine(flags=..., cuda=..., mps=..., capability=...)`` fakes what detection reads."""

    def _set(
        flags: set[str] | None = frozenset({"avx512f"}),
        name: str = "Intel(R) Xeon(R) CPU @ 2.20GHz",
        capability: str = "AVX512",
        cuda: CudaInfo | None = None,
        mps: bool = False,
    ) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: None if flags is None else set(flags))
        monkeypatch.setattr(hardware, "cpu_name", lambda: name)
        monkeypatch.setattr(hardware, "torch_cpu_capability", lambda: capability)
        monkeypatch.setattr(hardware, "cuda_info", lambda: cuda)
        monkeypatch.setattr(hardware, "mps_available", lambda: mps)

    return _set


A100 = CudaInfo("NVIDIA A100-SXM4-80GB", (8, 0), True)
T4 = CudaInfo("Tesla T4", (7, 5), False)


def test_a_cpu_without_native_bf16_trains_in_float32(machine) -> None:
    machine(flags={"avx512f", "avx512bw", "avx2"})
    choice = choose_precision("auto", detect())
    assert choice.value == "32-true" and choice.automatic
    text = choice.describe()
    assert text.startswith("trainer.precision=auto -> 32-true: this CPU (Intel(R) Xeon(R)")
    assert "has no AVX512-BF16/AMX" in text
    assert choose_dtype("auto", detect(), LORA, choice.value).value == "float32"


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_a_cpu_with_avx512_bf16_or_amx_trains_in_bf16_mixed(machine, flag: str) -> None:
    machine(flags={"avx512f", flag}, name="AMD EPYC 9B14")
    device = detect()
    choice = choose_precision("auto", device)
    assert choice.value == "bf16-mixed"
    assert f"this CPU (AMD EPYC 9B14) computes bfloat16 natively ({flag})" in choice.describe()
    # on a CPU the float32 base under bf16-mixed measured fastest, for adapters too
    for method in (LORA, FULL, FREEZE, None):
        assert choose_dtype("auto", device, method, choice.value).value == "float32"


def test_torch_kernels_below_avx512_do_not_count_as_native_bf16(machine) -> None:
    """The flags say yes, but torch dispatches AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)."""
    machine(flags={"avx512_bf16"}, capability="AVX2")
    choice = choose_precision("auto", detect())
    assert choice.value == "32-true" and "AVX2" in choice.reason


def test_without_proc_cpuinfo_torch_probes_the_cpu(machine, monkeypatch) -> None:
    import torch

    machine(flags=None)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert detect().bf16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not detect().bf16


def test_a_gpu_with_bf16_holds_an_adapters_base_in_bf16(machine) -> None:
    machine(cuda=A100)
    device = detect("auto")
    precision = choose_precision("auto", device)
    assert device.kind == "cuda" and precision.value == "bf16-mixed"
    assert "NVIDIA A100" in precision.describe()
    assert choose_dtype("auto", device, LORA, "bf16-mixed").value == "bfloat16"
    # weights that train stay float32: mixed precision computes in 16 bits, updates float32
    assert choose_dtype("auto", device, FULL, "bf16-mixed").value == "float32"
    assert choose_dtype("auto", device, FREEZE, "bf16-mixed").value == "float32"
    assert choose_dtype("auto", device, None, "bf16-mixed").value == "float32"


def test_an_older_gpu_gets_16_mixed(machine) -> None:
    machine(cuda=T4)
    device = detect("gpu")
    precision = choose_precision("auto", device)
    assert precision.value == "16-mixed" and "compute capability 7.5" in precision.reason
    assert choose_dtype("auto", device, LORA, "16-mixed").value == "float16"
    assert choose_dtype("auto", device, FULL, "16-mixed").value == "float32"


def test_accelerator_cpu_ignores_the_gpu(machine) -> None:
    machine(cuda=A100, flags={"avx2"})
    assert detect("cpu").kind == "cpu"
    assert choose_precision("auto", detect("cpu")).value == "32-true"


def test_an_apple_gpu_trains_in_float32(machine) -> None:
    machine(mps=True)
    device = detect()
    assert device.kind == "mps" and choose_precision("auto", device).value == "32-true"


def test_an_explicit_setting_always_wins(machine) -> None:
    machine(cuda=A100)
    device = detect()
    for value in ("32-true", "16-mixed", "bf16-true"):
        choice = choose_precision(value, device)
        assert choice.value == value and not choice.automatic
        assert choice.describe() == f"trainer.precision={value} (set in the config)"
    assert choose_dtype("float16", device, FULL, "bf16-mixed").value == "float16"
    machine(flags=set())
    assert choose_precision("bf16-mixed", detect()).value == "bf16-mixed"
    # a precision that holds the weights in 16 bits decides the dtype auto picks
    assert choose_dtype("auto", detect(), FULL, "bf16-true").value == "bfloat16"


def test_a_pinned_choice_is_kept_but_never_beats_the_config(machine) -> None:
    machine(cuda=A100)
    pins = hardware.pins_from({"precision": "32-true", "dtype": "float32"})
    with hardware.pinned(pins):
        assert choose_precision("auto", detect()).value == "32-true"
        assert choose_dtype("auto", detect(), LORA, "32-true").value == "float32"
        assert choose_precision("16-mixed", detect()).value == "16-mixed"
    assert choose_precision("auto", detect()).value == "bf16-mixed"


def test_the_trainer_gets_the_resolved_precision(machine, make_cfg) -> None:
    from framework.train.stage import build_trainer
    from tests.helpers import new_run

    machine(flags={"avx2"})
    cfg = make_cfg(*TINY, "trainer.precision=auto")
    assert build_trainer(new_run(cfg)).precision == "32-true"
    machine(flags={"avx512_bf16"})
    assert build_trainer(new_run(cfg)).precision == "bf16-mixed"
    cfg = make_cfg(*TINY, "trainer.precision=32-true")
    assert build_trainer(new_run(cfg)).precision == "32-true"


def test_the_defaults_are_auto_and_the_dtype_reaches_the_loader(machine, tmp_path) -> None:
    from framework.model.loading import resolve_dtype

    cfg = compose_config([])
    assert cfg.trainer.precision == "auto" and cfg.model.dtype == "auto"
    for model in ("hf", "smollm2", "tiny"):
        assert compose_config([f"model={model}"]).model.dtype == "auto"
    for trainer in ("gpu", "fsdp", "ddp"):
        assert compose_config([f"trainer={trainer}"]).trainer.precision == "auto"
    import torch

    machine(cuda=A100)
    assert resolve_dtype(cfg, LORA) is torch.bfloat16
    assert resolve_dtype(cfg, FULL) is torch.float32
    assert resolve_dtype(compose_config(["model.dtype=float16"]), FULL) is torch.float16


# --------------------------------------------------------------------------- threads
def test_threads_follow_the_physical_cores_unless_the_user_set_them(monkeypatch) -> None:
    for variable in hardware.THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(hardware, "physical_cores", lambda cpus: len(cpus) // 2)  # 2 per core
    monkeypatch.setattr(hardware, "cpu_quota", lambda: None)
    count, why = hardware.choose_threads()
    assert count == 2 and "physical core" in why
    monkeypatch.setattr(hardware, "cpu_quota", lambda: 1)
    assert hardware.choose_threads() == (1, "the container's CPU limit is 1")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.choose_threads() == (None, "OMP_NUM_THREADS=3 is set")


def test_physical_cores_count_this_machine() -> None:
    import os

    cpus = set(os.sched_getaffinity(0))
    assert 1 <= hardware.physical_cores(cpus) <= len(cpus)


def test_configure_threads_sets_torch_and_says_so(monkeypatch, caplog) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(hardware, "choose_threads", lambda: (1, "a test"))
    try:
        with caplog.at_level(logging.INFO, logger="framework.model.hardware"):
            assert hardware.configure_threads() == 1
        assert torch.get_num_threads() == 1
        assert "CPU threads: 1 (a test; OMP_NUM_THREADS=N sets another number)" in caplog.text
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- a real run
def test_a_real_tiny_run_says_what_it_chose_and_records_it(
    make_cfg, alpaca_file: Path, caplog
) -> None:
    """This machine's own detection: the log says what was chosen and why; the train summary
    keeps it; a resumed run (an earlier summary + a checkpoint) keeps the earlier choice."""
    from framework.pipeline import run_pipeline

    hardware._logged.clear()
    cfg = make_cfg(
        *TINY,
        "trainer.precision=auto",
        "trainer.max_steps=2",
        "data=alpaca",
        f"data.path={alpaca_file}",
        "stages=[prepare,train]",
    )
    expected, device = hardware.run_precision(cfg.trainer)
    dtype = hardware.run_dtype(cfg, LORA)  # float32 on a CPU; a LoRA base on a GPU: 16 bits
    with caplog.at_level(logging.INFO):
        run_pipeline(cfg)
    text = caplog.text
    assert f"trainer.precision=auto -> {expected.value}: " in text
    assert device.name in text
    assert f"model.dtype=auto -> {dtype.value}: " in text
    assert "CPU threads: " in text or device.kind != "cpu"
    run_dir = Path(cfg.paths.run_dir)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["hardware"]["precision"] == expected.value
    assert summary["hardware"]["dtype"] == summary["hardware"]["loaded_dtype"] == dtype.value
    assert summary["hardware"]["native_bf16"] == device.bf16
    assert summary["hardware"]["precision_reason"] == expected.describe()


def test_a_resumed_run_keeps_the_precision_it_started_with(machine, make_cfg, monkeypatch) -> None:
    """Its first attempt chose 32-true (another machine); this one would choose bf16-mixed."""
    from framework.train import stage
    from tests.helpers import new_run

    machine(flags={"avx512_bf16"})
    run = new_run(make_cfg(*TINY, "trainer.precision=auto"))
    seen: list[str] = []
    monkeypatch.setattr(stage, "load_splits", lambda run: {})
    monkeypatch.setattr(
        stage,
        "_train",
        lambda run, splits, started: seen.append(stage.resolve_precision(run.cfg).value),
    )
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "train_summary.json").write_text(
        json.dumps({"status": "training", "hardware": {"precision": "32-true", "dtype": "float32"}})
    )
    stage.train(run)  # no checkpoint: nothing to resume, this machine's choice
    (run.dir / "checkpoints").mkdir()
    (run.dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    stage.train(run)  # resuming: the recorded choice
    assert seen == ["bf16-mixed", "32-true"]

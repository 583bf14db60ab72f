"""Scale-out that runs here: two DDP "nodes" over loopback, FSDP's refusal on CPU, the
submitit launcher (local executor) and the sbatch script of the SLURM launcher.

Each node is a separate ``python run.py`` started with the environment a cluster sets
(MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE), as Lightning's LightningEnvironment reads
it. The tests start their own processes and kill whatever is left of them when they end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from framework.errors import ConfigError
from framework.resolvers import ROOT_DIR
from tests.conftest import TINY, compose_config, run_cli

#: Node processes that outlive this (the survivor of a killed node may wait on its peer).
NODE_TIMEOUT_S = 240

PROBE = '''
"""Test probe: records every training step's loss per process, outside the run directory,
and (where TS_TEST_STALL_AT is set) stops before the step of that number, for the test to
kill the process there."""
import json
import os
import time
from pathlib import Path

from lightning.pytorch import Callback

from framework import hookimpl


class Probe(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        stall_at = os.environ.get("TS_TEST_STALL_AT")
        if stall_at and trainer.global_step == int(stall_at):
            Path(os.environ["TS_TEST_STALLED"]).write_text(str(os.getpid()))
            time.sleep(600)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = Path(os.environ["TS_TEST_PROBE_DIR"]) / f"rank{trainer.global_rank}.jsonl"
        labelled = (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
        row = {"step": trainer.global_step, "loss": float(outputs["loss"]), "labelled": labelled}
        with path.open("a") as f:
            f.write(json.dumps(row) + "\\n")


@hookimpl
def tunesmith_configure_callbacks(cfg, run):
    return [Probe()]
'''


def write_single_digit_sums(path: Path) -> Path:
    """40 alpaca records ``a + b`` whose answer is one digit: every example has the same
    number of labelled tokens (see the equality test)."""
    rows = [
        {"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": str(a + b)}
        for a in range(10)
        for b in range(10)
        if a + b <= 9
    ][:40]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_port() -> int:
    """A TCP port free on the loopback interface now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Variables a scheduler or an outer launcher may have set: the nodes get only ours.
_CLUSTER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE")


def node_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _CLUSTER_VARS and not k.startswith(("SLURM_", "PL_", "TORCHELASTIC_"))
    }
    env.update(
        PYTHONPATH=str(tmp_path),  # the probe plugin
        OMP_NUM_THREADS="1",  # one thread per process: 2 processes on 2 cores
        TS_TEST_PROBE_DIR=str(tmp_path / "probe"),
        **extra,
    )
    return env


@contextmanager
def started(commands: list[tuple[list[str], dict[str, str], Path]]) -> Iterator[list]:
    """Start each ``(args, env, log file)`` as ``python run.py args`` in its own process group;
    on the way out, kill every group still running (a failed test leaves no process behind)."""
    procs = []
    try:
        for args, env, log in commands:
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(ROOT_DIR / "run.py"), *args],
                        cwd=ROOT_DIR,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its group: the process and any it starts
                    )
                )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_all(procs: list, logs: list[Path], timeout: float = NODE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a node did not finish in {timeout} s:\n" + _tails(logs))
    codes = [p.returncode for p in procs]
    assert codes == [0] * len(procs), f"exit codes {codes}:\n" + _tails(logs)


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs)


def two_nodes(
    args: list[str], tmp_path: Path, tag: str, env: dict[int, dict[str, str]] | None = None
) -> list[tuple[list[str], dict[str, str], Path]]:
    """The commands of a 2-node job, one process per node, as a cluster would start them."""
    port = str(free_port())
    return [
        (
            [*args, "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=1"],
            node_env(
                tmp_path,
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                NODE_RANK=str(node),
                WORLD_SIZE="2",
                **(env or {}).get(node, {}),
            ),
            tmp_path / f"{tag}_node{node}.log",
        )
        for node in (0, 1)
    ]


def losses(probe_dir: Path, rank: int) -> dict[int, dict]:
    rows = [json.loads(line) for line in (probe_dir / f"rank{rank}.jsonl").open()]
    return {r["step"]: r for r in rows}


def tiny_args(data: Path, run_dir: Path, batch_size: int) -> list[str]:
    return [
        *TINY,
        "data=alpaca",
        f"data.path={data}",
        f"data.batch_size={batch_size}",
        "data.packing=false",  # rows padded one by one: no packing across examples
        "stages=[prepare,train]",
        "trainer.accelerator=cpu",
        "plugins=[scale_probe]",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "scale_probe.py").write_text(textwrap.dedent(PROBE))
    (tmp_path / "probe").mkdir()
    return tmp_path / "probe"


@pytest.mark.parametrize(
    ("env", "zero", "overrides"),
    [
        ({}, True, []),
        ({"NODE_RANK": "0", "LOCAL_RANK": "0"}, True, []),
        # a node the cluster started: not rank 0 before Lightning knows the devices per node
        (
            {"NODE_RANK": "1"},
            False,
            ["hydra.output_subdir=null", "hydra.job.name=train_node1_process0"],
        ),
        ({"GROUP_RANK": "1", "LOCAL_RANK": "0"}, False, None),  # torchelastic
        ({"NODE_RANK": "0", "LOCAL_RANK": "1"}, False, None),  # started by Lightning on node 0
        (
            {"RANK": "3", "NODE_RANK": "1"},
            False,
            ["hydra.output_subdir=null", "hydra.job.name=train_rank3"],
        ),
        ({"SLURM_PROCID": "0"}, True, []),
    ],
)
def test_which_process_writes_the_run(
    monkeypatch: pytest.MonkeyPatch, env: dict, zero: bool, overrides: list | None
) -> None:
    from framework import distributed

    for key in (*_CLUSTER_VARS, "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert distributed.is_global_zero() is zero
    if overrides is not None:
        assert distributed.worker_hydra_overrides() == overrides


def test_another_node_reads_the_prepared_data_only_when_training_needs_it(
    tmp_path: Path, alpaca_file: Path
) -> None:
    """A worker's splits are read on first use (after Lightning's rendezvous, so after rank 0
    prepared them); a node that cannot see them is told about the shared directory."""
    from framework.errors import TunesmithError
    from framework.manager import build_plugin_manager
    from framework.pipeline import PreparedSplits
    from framework.run import Run

    cfg = compose_config([*TINY, "data=alpaca", f"data.path={alpaca_file}"], tmp_path / "run")
    run = Run(cfg=cfg, dir=tmp_path / "run", plugins=build_plugin_manager())
    splits = PreparedSplits(run)  # nothing read yet: rank 0 may not have prepared them
    with pytest.raises(TunesmithError) as err:
        splits.get("train")
    assert "shared filesystem" in str(err.value)

    from framework.data.prepare import prepare

    prepared = prepare(run)  # what rank 0 does before it joins training
    assert splits.get("train") == prepared["train"] and set(splits) == {"train", "val", "test"}


@pytest.mark.parametrize(("n", "world"), [(32, 2), (7, 3), (2, 4)])
def test_processes_share_out_the_one_process_order(n: int, world: int) -> None:
    """Global batch k of ``world`` processes with batch b == batch k of one with world * b."""
    from framework.data.sampler import EpochShuffleSampler, ShardedEpochSampler

    b = 2
    one = EpochShuffleSampler(n, seed=5)
    one.set_epoch(3)
    order = list(one)
    shards = []
    for rank in range(world):
        sampler = ShardedEpochSampler(n, seed=5, num_replicas=world, rank=rank)
        sampler.set_epoch(3)
        shards.append(list(sampler))
    assert len({len(s) for s in shards}) == 1  # as many batches on every process
    for k in range(-(-n // (world * b))):
        together = sorted(i for s in shards for i in s[k * b : (k + 1) * b])
        expected = order[k * world * b : (k + 1) * world * b]
        # the last batch is padded with the epoch's first examples, as DistributedSampler does
        padded = (expected + order * world)[: len(together)]
        assert together == sorted(padded), k


@pytest.mark.slow
def test_two_nodes_over_loopback_train_like_one_process_with_the_same_global_batch(
    tmp_path: Path, probe: Path
) -> None:
    """2 nodes x batch 2 == 1 process x batch 4, to float tolerance, and only rank 0 writes.

    Why the two runs are the same computation:
    * the same examples: every process deals out the one-process order of the epoch
      (ShardedEpochSampler), so global batch k of 2 x 2 holds exactly batch k of 1 x 4;
    * the same loss: DDP averages the gradients of the processes, each the gradient of its
      mean loss over its labelled tokens. The mean of two means is the mean over all tokens
      only when both processes have as many labelled tokens; here every answer is one digit,
      so every example has the same number of them (checked below);
    * the same start and no randomness: one seed, LoRA without dropout, the tiny model's
      fixed init, float32, gradient clipping after the all-reduce in both.
    What is left differs only in float rounding (a sum of two half-batch gradients vs one
    full-batch gradient), amplified a little by Adam over 4 steps.
    """
    from safetensors.torch import load_file
    from torch.testing import assert_close

    data = write_single_digit_sums(tmp_path / "sums.jsonl")
    multi_dir, single_dir = tmp_path / "two_nodes", tmp_path / "one_process"
    commands = two_nodes(tiny_args(data, multi_dir, 2), tmp_path, "multi")
    with started(commands) as procs:
        wait_all(procs, [log for _, _, log in commands])
    multi = {rank: losses(probe, rank) for rank in (0, 1)}
    for rank in (0, 1):
        (probe / f"rank{rank}.jsonl").rename(probe / f"multi_rank{rank}.jsonl")

    single_log = tmp_path / "single.log"
    with started([(tiny_args(data, single_dir, 4), node_env(tmp_path), single_log)]) as procs:
        wait_all(procs, [single_log])
    single = losses(probe, 0)

    # every example has the same number of labelled tokens, so the losses average exactly
    counts = {n for rows in (*multi.values(), single) for r in rows.values() for n in r["labelled"]}
    assert len(counts) == 1, counts
    assert sorted(single) == sorted(multi[0]) == sorted(multi[1]) == [1, 2, 3, 4]
    for step, row in single.items():
        global_loss = (multi[0][step]["loss"] + multi[1][step]["loss"]) / 2
        assert global_loss == pytest.approx(row["loss"], rel=1e-5, abs=1e-6), step

    adapter = "artifact/adapter_model.safetensors"
    multi_weights, single_weights = load_file(multi_dir / adapter), load_file(single_dir / adapter)
    assert multi_weights.keys() == single_weights.keys()
    for key, value in single_weights.items():
        assert_close(multi_weights[key], value, rtol=1e-4, atol=1e-5, msg=key)

    summary = json.loads((multi_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    state = json.loads((multi_dir / "run_state.json").read_text())
    assert state == {"stages_done": ["prepare", "train"], "status": "finished"}
    # Only global rank 0 writes the run: the directory holds what a one-process run writes,
    # plus node 1's own log file (as Lightning gives the processes it starts on a node).
    multi_files = {p.name for p in multi_dir.iterdir()}
    single_files = {p.name for p in single_dir.iterdir()}
    assert multi_files - single_files == {"train_node1_process0.log"}
    assert single_files <= multi_files
    assert "GLOBAL_RANK: 1" in (multi_dir / "train_node1_process0.log").read_text()
    assert "GLOBAL_RANK: 1" not in (multi_dir / "cli.log").read_text()


@pytest.mark.slow
def test_a_killed_node_resumes_from_the_last_checkpoint_when_both_are_started_again(
    tmp_path: Path, probe: Path
) -> None:
    """SIGKILL global rank 0 after the checkpoint of step 2; the same 2-node command resumes."""
    data = write_single_digit_sums(tmp_path / "sums.jsonl")
    run_dir = tmp_path / "run"
    args = [*tiny_args(data, run_dir, 2), "callbacks.model_checkpoint.every_n_train_steps=1"]
    stalled = tmp_path / "stalled"
    stall = {0: {"TS_TEST_STALL_AT": "2", "TS_TEST_STALLED": str(stalled)}}
    commands = two_nodes(args, tmp_path, "first", env=stall)
    with started(commands) as procs:
        deadline = time.monotonic() + NODE_TIMEOUT_S
        while not stalled.exists():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("node 0 never reached step 2:\n" + _tails([c[2] for c in commands]))
            time.sleep(0.2)
        os.kill(procs[0].pid, signal.SIGKILL)  # the node that writes the run dies mid-training
        procs[0].wait()
        # its peer fails on the broken connection (a scheduler would kill it anyway)
        with contextlib.suppress(subprocess.TimeoutExpired):
            procs[1].wait(timeout=60)
    assert (run_dir / "checkpoints/last.ckpt").is_file()
    assert json.loads((run_dir / "run_state.json").read_text())["status"] == "running"
    first = {rank: losses(probe, rank) for rank in (0, 1)}
    assert sorted(first[0]) == [1, 2]
    for rank in (0, 1):
        (probe / f"rank{rank}.jsonl").rename(probe / f"first_rank{rank}.jsonl")

    commands = two_nodes(args, tmp_path, "again")
    with started(commands) as procs:
        wait_all(procs, [c[2] for c in commands])
    again = {rank: losses(probe, rank) for rank in (0, 1)}
    assert sorted(again[0]) == sorted(again[1]) == [3, 4], "it must go on from step 2"
    assert re.search(r"Resumed from \S+last\.ckpt at step 2", (run_dir / "cli.log").read_text())
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    state = json.loads((run_dir / "run_state.json").read_text())
    assert state == {"stages_done": ["prepare", "train"], "status": "finished"}
    assert (run_dir / "artifact/adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- FSDP on CPU
def test_fsdp_on_cpu_is_refused_with_a_clear_config_error(tmp_path: Path) -> None:
    """Lightning 2.6 refuses FSDP without CUDA (docs/methods.md says where, and why torch's
    FSDP would refuse next); tunesmith turns that into a ConfigError with what to do."""
    from framework.manager import build_plugin_manager
    from framework.run import Run
    from framework.train.stage import build_trainer

    overrides = [*TINY, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"]
    cfg = compose_config(overrides, run_dir=tmp_path / "run")
    assert cfg.trainer.strategy._target_.endswith("FSDPStrategy")  # the config composes
    run = Run(cfg=cfg, dir=tmp_path / "run", plugins=build_plugin_manager())
    with pytest.raises(ConfigError) as err:
        build_trainer(run)
    message = str(err.value)
    assert "requires a GPU accelerator" in message and "accelerator='cpu'" in message
    assert "trainer=ddp trainer.accelerator=cpu" in message  # what to do instead


@pytest.mark.slow
def test_fsdp_on_cpu_from_the_command_line_is_a_message_not_a_traceback(
    tmp_path: Path, alpaca_file: Path
) -> None:
    proc = run_cli(
        *TINY,
        "data=alpaca",
        f"data.path={alpaca_file}",
        "stages=[prepare,train]",
        "trainer=fsdp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"OMP_NUM_THREADS": "1"},
        timeout=NODE_TIMEOUT_S,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: lightning.Trainer rejected the trainer config" in proc.stderr
    assert "requires a GPU accelerator" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- submitit
@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_and_summarises_it(tmp_path: Path) -> None:
    """hydra/launcher=submitit_local: each job is pickled, run by submitit in a process of its
    own (``python -m submitit.core._submit``, as on a SLURM node) and its result read back."""
    data = write_single_digit_sums(tmp_path / "sums.jsonl")
    proc = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        *TINY,
        "trainer.max_steps=2",
        "data=alpaca",
        f"data.path={data}",
        "stages=[prepare,train,evaluate]",
        "evaluator.metrics=[perplexity]",
        "evaluator.compare_base=false",
        "optim.lr=1e-3,3e-3",
        env={"TUNESMITH_OUTPUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"},
        timeout=NODE_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stderr + proc.stdout
    (sweep_dir,) = (tmp_path / "out" / "multirun").iterdir()
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/job.json")]
    assert sorted(j["num"] for j in jobs) == [0, 1]
    assert all(j["status"] == "finished" for j in jobs)
    # submitit's own records: one folder per job, its log and its pickled result
    job_dirs = [p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]  # job ids
    assert len(job_dirs) == 2
    for job_dir in job_dirs:
        assert "stage: train" in (job_dir / f"{job_dir.name}_0_log.out").read_text()
        assert (job_dir / f"{job_dir.name}_0_result.pkl").is_file()
    # the sweep summary, written by the launching process once both jobs are back
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["metric"] == "tuned/perplexity"
    assert sorted(row["num"] for row in summary["jobs"]) == [0, 1]
    assert summary["counts"]["finished"] == 2
    assert (sweep_dir / "sweep_summary.md").is_file()


def _sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> str:
    """The sbatch script hydra/launcher=slurm submits for a 2-job sweep, stopped before sbatch.

    The launcher runs as in a sweep (its own parameter mapping, submitit's SlurmExecutor,
    the jobs pickled); only ``SlurmExecutor._submit_command`` is replaced, by one that keeps
    the script submitit renders for it and stops.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    from framework.cli import CONFIG_DIR

    class Stop(Exception):
        pass

    scripts = []

    def keep_the_script(self: SlurmExecutor, command: str) -> None:
        scripts.append(self._make_submission_file_text(command, "test"))
        raise Stop

    monkeypatch.setattr(SlurmExecutor, "_submit_command", keep_the_script)
    bin_dir = tmp_path / "bin"  # submitit's SlurmExecutor insists on finding srun
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    "hydra/launcher=slurm",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    "hydra.job.name=tunesmith",
                    *overrides,
                ],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        launcher = instantiate(cfg.hydra.launcher)
        launcher.setup(hydra_context=None, task_function=print, config=cfg)
        with pytest.raises(Stop):
            launcher.launch([["optim.lr=1e-4"], ["optim.lr=3e-4"]], initial_job_idx=0)
    finally:
        GlobalHydra.instance().clear()
    assert len(scripts) == 1  # one array job for the sweep
    return scripts[0]


def _directives(script: str) -> dict[str, str]:
    pairs = (
        line.removeprefix("#SBATCH --").split("=", 1)
        for line in script.splitlines()
        if line.startswith("#SBATCH --")
    )
    return {key: value for key, value in pairs}


def test_slurm_launcher_renders_a_valid_sbatch_script_from_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _sbatch_script(tmp_path, monkeypatch, "hydra.launcher.partition=gpu")
    assert script.startswith("#!/bin/bash\n")
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr  # valid shell
    folder = tmp_path / "sweep" / ".submitit"
    # conf/hydra/launcher/slurm.yaml's values, as sbatch options
    assert _directives(script) == {
        "array": "0-1%2",  # 2 jobs, at most array_parallelism (64) at once
        "cpus-per-task": "8",
        "error": f"{folder}/%A_%a/%A_%a_0_log.err",
        "gpus-per-node": "1",
        "job-name": "tunesmith",
        "mem": "32GB",
        "nodes": "1",
        "ntasks-per-node": "1",
        "open-mode": "append",
        "output": f"{folder}/%A_%a/%A_%a_0_log.out",
        "partition": "gpu",
        "signal": "USR2@120",  # submitit requeues a job that reaches its time limit
        "time": "240",
        "wckey": "submitit",
    }
    # the command: this Python runs the pickled job on the node
    (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
    assert srun.endswith(f"{sys.executable} -u -m submitit.core._submit {folder}/%j")
    assert len(list(folder.glob("*.pkl"))) == 2  # the 2 jobs, pickled for the nodes


def test_slurm_launcher_renders_a_multi_node_ddp_job_with_setup_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _sbatch_script(
        tmp_path,
        monkeypatch,
        "hydra.launcher.partition=a100",
        "hydra.launcher.account=proj42",
        "hydra.launcher.nodes=2",
        "hydra.launcher.tasks_per_node=4",  # one task per GPU: Lightning's SLURMEnvironment
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.cpus_per_task=6",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.setup=[module load cuda]",
        "+hydra.launcher.additional_parameters.mail-type=END",
    )
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr
    options = _directives(script)
    assert {k: options[k] for k in ("partition", "account", "nodes", "ntasks-per-node")} == {
        "partition": "a100",
        "account": "proj42",
        "nodes": "2",
        "ntasks-per-node": "4",
    }
    assert options["gpus-per-node"] == "4" and options["cpus-per-task"] == "6"
    assert options["time"] == "90" and options["mail-type"] == "END"
    setup, command = script.split("# setup\n")[1].split("# command\n")
    assert setup.strip() == "module load cuda"
    assert f"{sys.executable} -u -m submitit.core._submit" in command

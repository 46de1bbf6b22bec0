"""Two nodes on one machine: two ``torchrun --nnodes 2`` agents (node ranks 0 and 1, one process each) rendezvous on
127.0.0.1 and run ``rl-lightning fit`` with ``--trainer.num_nodes 2``, as on two machines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT
from tests.test_cli import _quick
from tests.test_ddp import _assert_same_networks

pytestmark = pytest.mark.slow

CONFIG = ROOT / "configs/ppo.yaml"
FRAMES_PER_BATCH = yaml.safe_load(CONFIG.read_text())["data"]["frames_per_batch"]


def _start_node(node_rank: int, root: Path, total_frames: int, *extra: str) -> subprocess.Popen[str]:
    """Node ``node_rank``'s torchrun agent, in a session of its own, writing its logs and checkpoints under
    ``root``; the rendezvous port is the test's ``MASTER_PORT`` (conftest's free port)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    torchrun += [f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={os.environ['MASTER_PORT']}"]
    args = [a for a in _quick(CONFIG, root) if not a.startswith("--data.total_frames")]
    fit = ["-m", "rl_lightning", "fit", *args, f"--data.total_frames={total_frames}", "--model.init_args.n_epochs=2"]
    fit += ["--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp", *extra]
    return subprocess.Popen(
        [*torchrun, *fit],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _end(processes: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    """Each process's stderr once it ended, within ``timeout`` seconds for all; on a hang every process (and the
    workers the agents started in sessions of their own, see the callers) is killed and the test fails."""
    deadline = time.monotonic() + timeout
    stderr = []
    for process in processes:
        try:
            stderr.append(process.communicate(timeout=max(deadline - time.monotonic(), 0.1))[1])
        except subprocess.TimeoutExpired:
            for other in processes:
                os.killpg(other.pid, signal.SIGKILL)
            pytest.fail(f"the two-node run did not end within {timeout} s")
    return stderr


def _callback(class_path: str, dirpath: Path) -> str:
    return f"--trainer.callbacks+={json.dumps({'class_path': class_path, 'init_args': {'dirpath': str(dirpath)}})}"


def test_two_nodes_keep_identical_networks_and_count_frames_over_both(tmp_path: Path) -> None:
    """Also: only global rank 0 writes logs and checkpoints (node 1 is pointed at a directory of its own, which
    stays empty), and each node seeds its envs apart (seed + 1000 x global rank)."""
    probe = _callback("tests.probe.SaveRankState", tmp_path / "ranks")
    roots = [tmp_path / "node0", tmp_path / "node1"]
    nodes = [_start_node(n, roots[n], 2 * 2 * FRAMES_PER_BATCH, probe) for n in (0, 1)]
    for node, stderr in zip(nodes, _end(nodes, timeout=120), strict=True):
        assert node.returncode == 0, stderr[-3000:]

    ranks = {r: torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)}
    _assert_same_networks(ranks)  # bit-identical parameters and optimizer states, same counters
    assert [ranks[r]["node_rank"] for r in (0, 1)] == [0, 1]
    assert ranks[0]["cluster_environment"] == "TorchElasticEnvironment"  # Lightning read torchrun's variables
    assert ranks[0]["frames"] == 2 * 2 * FRAMES_PER_BATCH  # the budget of both nodes ...
    assert ranks[0]["batches"] == ranks[1]["batches"] == 2  # ... each collected half of it
    assert ranks[0]["updates"] > 0
    assert ranks[0]["episodes"] == ranks[1]["episodes"] > 0  # counted over both nodes
    assert [ranks[r]["env_seed"] for r in (0, 1)] == [0, 1000]
    assert not torch.equal(ranks[0]["torch_rng"], ranks[1]["torch_rng"])
    assert list(roots[0].rglob("last.ckpt")) and list(roots[0].rglob("metrics.csv"))
    assert not list(roots[1].rglob("*.*")), "node 1 wrote files: only global rank 0 writes logs and checkpoints"


def test_a_killed_node_ends_the_other_with_a_message_naming_it(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = _callback("tests.probe.SavePidAfterFirstBatch", pids)
    nodes = [_start_node(n, tmp_path, 10**7, started) for n in (0, 1)]
    try:
        deadline = time.monotonic() + 60
        while not (pids / "rank1.pid").exists():
            assert time.monotonic() < deadline, "node 1 did not finish its first batch within 60 s"
            assert all(node.poll() is None for node in nodes), "a node ended before the kill"
            time.sleep(0.2)
        # The node goes down as a whole: its agent and the training process it started in a session of its own.
        os.killpg(nodes[1].pid, signal.SIGKILL)
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGKILL)
        killed = time.monotonic()
        (stderr, _) = _end(nodes, timeout=60)
    finally:
        for name in ("rank0.pid", "rank1.pid"):  # a training process left behind by a failed test
            if (pids / name).exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int((pids / name).read_text()), signal.SIGKILL)
    ended = time.monotonic() - killed
    assert ended < 30, f"node 0 ended {ended:.0f} s after node 1 was killed"
    assert nodes[0].returncode != 0
    assert "rank 1 of 2 (node 1) is gone" in stderr, stderr[-8000:]
    assert "--ckpt_path last" in stderr


FAKE_SRUN = """#!/bin/bash
# srun for tests: starts the command once per task of SLURM_NNODES x SLURM_NTASKS_PER_NODE on this machine, each with
# the variables SLURM gives a task, and fails if any task failed.
n=$((SLURM_NNODES * SLURM_NTASKS_PER_NODE))
pids=()
for ((i = 0; i < n; i++)); do
    SLURM_NTASKS=$n SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) \\
        SLURM_NODEID=$((i / SLURM_NTASKS_PER_NODE)) "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def test_the_sbatch_example_runs_two_nodes_under_slurm_variables(tmp_path: Path) -> None:
    """``examples/slurm_ppo.sbatch`` as SLURM would run it on 2 nodes x 1 task (an ``srun`` stand-in starts the
    tasks here with SLURM's variables): Lightning's SLURMEnvironment forms the two-node run from them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "python").write_text(f'#!/bin/bash\nexec {sys.executable} "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    slurm = {"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "1", "SLURM_JOB_NAME": "ppo-ddp"}
    slurm["SLURM_NODELIST"] = "127.0.0.1"
    env = {**os.environ, **slurm, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RUN_DIR": str(tmp_path / "run")}
    probe = _callback("tests.probe.SaveRankState", tmp_path / "ranks")
    args = [
        "--trainer.accelerator=cpu",
        f"--data.total_frames={2 * 2 * FRAMES_PER_BATCH}",
        "--model.init_args.n_epochs=2",
    ]
    args += ["--trainer.enable_progress_bar=false", "--trainer.val_check_interval=1", probe]
    process = subprocess.Popen(
        ["bash", str(ROOT / "examples/slurm_ppo.sbatch"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    (stderr,) = _end([process], timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    ranks = {r: torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)}
    _assert_same_networks(ranks)
    assert [ranks[r]["node_rank"] for r in (0, 1)] == [0, 1]
    assert ranks[0]["cluster_environment"] == "SLURMEnvironment"
    assert ranks[0]["frames"] == 2 * 2 * FRAMES_PER_BATCH and ranks[0]["batches"] == 2
    assert list((tmp_path / "run").rglob("last.ckpt"))

"""A run killed at any moment continues from its last checkpoint: a real process, killed by kill -9 or Ctrl-C,
resumed from what it left on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rl_lightning.checkpoint import RLCheckpointIO
from rl_lightning.cli import cli
from tests.conftest import ROOT
from tests.test_cli import _quick

pytestmark = pytest.mark.slow


def _fit_args(config: Path, tmp_path: Path, total_frames: int, *extra: str) -> list[str]:
    args = [a for a in _quick(config, tmp_path) if not a.startswith("--data.total_frames")]
    return ["fit", *args, f"--data.total_frames={total_frames}", *extra]


def _start(config: Path, tmp_path: Path, total_frames: int, *extra: str) -> subprocess.Popen[str]:
    """The run in a process group of its own, as a terminal's foreground job (Ctrl-C reaches the whole group)."""
    command = [sys.executable, "-m", "rl_lightning", *_fit_args(config, tmp_path, total_frames, *extra)]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for_checkpoint(tmp_path: Path, proc: subprocess.Popen[str], frames: int) -> None:
    """Until a last.ckpt of at least ``frames`` frames is on disk."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        for path in tmp_path.rglob("last.ckpt"):
            try:
                if RLCheckpointIO().load_checkpoint(path)["rl_lightning"]["frames"] >= frames:
                    return
            except (ValueError, FileNotFoundError, KeyError):  # a save in progress is not a candidate
                pass
        time.sleep(0.2)
    raise AssertionError("no checkpoint was written in time")


def _resume(config: Path, tmp_path: Path, total_frames: int, *extra: str) -> dict[str, Any]:
    """``rl-lightning fit ... --ckpt_path=last`` up to ``total_frames``, in this process: what is tested is what the
    killed process left on disk, and a new interpreter would spend seconds importing torch and Lightning. Returns
    the state the run started from once the checkpoint was restored."""
    probe = tmp_path / "resumed"
    callback = {"class_path": "tests.probe.SaveRankState", "init_args": {"dirpath": str(probe), "at_start": True}}
    cli(
        _fit_args(
            config, tmp_path, total_frames, *extra, "--ckpt_path=last", f"--trainer.callbacks+={json.dumps(callback)}"
        )
    )
    return torch.load(probe / "rank0.pt", weights_only=True)


def _assert_resumed_state_is_the_checkpoint(resumed: dict[str, Any], saved: dict[str, Any]) -> None:
    assert resumed["frames"] == saved["rl_lightning"]["frames"]
    assert resumed["updates"] == saved["rl_lightning"]["updates"]
    assert resumed["batches"] == saved["rl_lightning"]["loop"]["batches"]
    assert resumed["params"].keys() == saved["state_dict"].keys()
    for name, value in saved["state_dict"].items():  # networks, target networks, normalizer statistics
        assert torch.equal(resumed["params"][name], value), name
    for restored, written in zip(resumed["optimizers"], saved["optimizer_states"], strict=True):
        for index, state in written["state"].items():
            for key, value in state.items():
                assert torch.equal(restored["state"][index][key], value), (index, key)


def test_kill_9_mid_run_then_resume_from_last(tmp_path: Path) -> None:
    config = ROOT / "configs/sac.yaml"
    fpb = yaml.safe_load(config.read_text())["data"]["frames_per_batch"]
    proc = _start(config, tmp_path, 1000 * fpb)
    _wait_for_checkpoint(tmp_path, proc, 3 * fpb)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (last,) = tmp_path.rglob("last.ckpt")
    saved = RLCheckpointIO().load_checkpoint(last)  # intact, whatever the kill interrupted
    frames = saved["rl_lightning"]["frames"]

    resumed = _resume(config, tmp_path, frames + 2 * fpb)
    _assert_resumed_state_is_the_checkpoint(resumed, saved)
    (buffer,) = [v for k, v in saved["callbacks"].items() if k.startswith("ReplayBufferTrainer")]
    written = buffer["per_rank"][0]["buffer"]
    for key, value in written["data"].items():  # the replay buffer's contents, bit for bit
        assert torch.equal(resumed["buffer"]["data"][key], value), key
    assert resumed["buffer"]["size"] == written["size"] == frames
    newest = max(tmp_path.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert RLCheckpointIO().load_checkpoint(newest)["rl_lightning"]["frames"] == frames + 2 * fpb  # on to the budget


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_ctrl_c_stops_after_the_batch_with_a_checkpoint_and_resumes(tmp_path: Path, vectorization: str) -> None:
    config = ROOT / "configs/ppo.yaml"
    fpb = yaml.safe_load(config.read_text())["data"]["frames_per_batch"]
    normalize = "--model.init_args.normalize_observations=true"
    proc = _start(config, tmp_path, 1000 * fpb, normalize, f"--data.vectorization={vectorization}")
    _wait_for_checkpoint(tmp_path, proc, 2 * fpb)
    os.killpg(proc.pid, signal.SIGINT)  # the whole group, async envs' workers too, as a terminal's Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]  # a graceful stop: the fit ended normally
    assert "Interrupted: stopping after this collector batch" in stderr
    (last,) = tmp_path.rglob("last.ckpt")
    saved = RLCheckpointIO().load_checkpoint(last)
    frames = saved["rl_lightning"]["frames"]
    assert frames % fpb == 0 and 2 * fpb <= frames < 1000 * fpb
    assert saved["rl_lightning"]["updates"] == saved["rl_lightning"]["loop"]["batches"] * 20  # whole batches

    resumed = _resume(config, tmp_path, frames + 2 * fpb, normalize, f"--data.vectorization={vectorization}")
    _assert_resumed_state_is_the_checkpoint(resumed, saved)

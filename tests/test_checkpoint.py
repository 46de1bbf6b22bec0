"""RLCheckpointIO: atomic writes, large tensors beside the file, loading without unpickling code."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rl_lightning.checkpoint import RLCheckpointIO
from tests.conftest import ROOT


def _data_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.data-"))


def test_round_trip_keeps_small_tensors_inline_and_large_ones_beside(tmp_path: Path) -> None:
    io = RLCheckpointIO(external_bytes=4096)
    path = tmp_path / "run.ckpt"
    checkpoint = {
        "state_dict": {"w": torch.randn(3, 3), "big": torch.randn(64, 32)},
        "buffers": [torch.arange(2000, dtype=torch.int64), (torch.ones(5000, dtype=torch.bool), 7)],
        "half": torch.randn(4096, dtype=torch.bfloat16),
        "meta": {"frames": 10, "name": "PPO"},
    }
    io.save_checkpoint(checkpoint, path)
    (data_dir,) = _data_dirs(path)
    assert len(list(data_dir.iterdir())) == 4  # big, the int64 range, the bools, the bf16 tensor
    assert path.stat().st_size < 4096 * 2
    loaded = io.load_checkpoint(path)
    assert loaded["meta"] == checkpoint["meta"]
    for key in ("w", "big"):
        assert torch.equal(loaded["state_dict"][key], checkpoint["state_dict"][key])
    assert torch.equal(loaded["buffers"][0], checkpoint["buffers"][0])
    assert torch.equal(loaded["buffers"][1][0], checkpoint["buffers"][1][0]) and loaded["buffers"][1][1] == 7
    assert loaded["half"].dtype == torch.bfloat16 and torch.equal(loaded["half"], checkpoint["half"])
    loaded["state_dict"]["big"].zero_()  # a private mapping: the file keeps its data
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["big"], checkpoint["state_dict"]["big"])


def test_saving_again_replaces_the_data_directory_and_removing_deletes_it(tmp_path: Path) -> None:
    io = RLCheckpointIO(external_bytes=1024)
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"x": torch.zeros(1024)}, path)
    first = _data_dirs(path)
    io.save_checkpoint({"x": torch.ones(1024)}, path)
    second = _data_dirs(path)
    assert len(first) == len(second) == 1 and first != second
    assert io.load_checkpoint(path)["x"].sum() == 1024
    io.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_with_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": argparse.Namespace(a=1)}, path)  # unpickling it would import code
    with pytest.raises(ValueError, match=r"Refusing to load .*argparse\.Namespace.*weights_only=True"):
        RLCheckpointIO().load_checkpoint(path)


def test_missing_or_damaged_files_are_named(tmp_path: Path) -> None:
    io = RLCheckpointIO(external_bytes=1024)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.load_checkpoint(tmp_path / "nope.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        io.load_checkpoint(garbage)
    path = tmp_path / "run.ckpt"
    io.save_checkpoint({"x": torch.zeros(1024)}, path)
    (data_dir,) = _data_dirs(path)
    (data_dir / "0.bin").write_bytes(b"short")
    with pytest.raises(ValueError, match="damaged"):
        io.load_checkpoint(path)
    for file in data_dir.iterdir():
        file.unlink()
    data_dir.rmdir()
    with pytest.raises(FileNotFoundError, match=r"which is missing"):
        io.load_checkpoint(path)


WRITER = """
import sys, torch
from rl_lightning.checkpoint import RLCheckpointIO
from tests.conftest import ROOT
io = RLCheckpointIO(external_bytes=1 << 20)
print("ready", flush=True)
for i in range(1, 10**6):
    io.save_checkpoint({"version": i, "big": torch.full((1 << 22,), float(i)), "small": torch.full((8,), float(i))},
                       sys.argv[1])
"""


def test_a_save_killed_midway_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """kill -9 a process that saves a 16 MiB checkpoint in a loop; whatever it left must load whole."""
    path = tmp_path / "last.ckpt"
    for delay in (0.05, 0.23, 0.41):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        while not path.exists():  # the first save has completed
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = RLCheckpointIO().load_checkpoint(path)
        version = float(loaded["version"])
        assert torch.all(loaded["big"] == version) and torch.all(loaded["small"] == version)
        assert len(_data_dirs(path)) >= 1


def test_a_fit_checkpoints_through_it_and_pruning_removes_the_data_directories(tmp_path: Path) -> None:
    """SAC's replay buffer goes beside each .ckpt; save_top_k pruning removes the directories of pruned files."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.test_sac import tiny_sac_run

    checkpoints = ModelCheckpoint(tmp_path / "ckpt", monitor="val/episode_return", mode="max", save_top_k=2,
                                  save_last=True, every_n_train_steps=1)  # fmt: skip
    io = RLCheckpointIO(external_bytes=512)  # the observations of 64 transitions or more
    trainer, model = tiny_sac_run(
        tmp_path, enable_checkpointing=True, callbacks=[checkpoints], plugins=[io], val_check_interval=1
    )
    assert trainer.strategy.checkpoint_io is io
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(files) == 3  # the two best and last.ckpt; the others were pruned
    for file in files:
        assert len(_data_dirs(file)) == 1
    assert len([p for p in (tmp_path / "ckpt").iterdir() if p.is_dir()]) == 3

    saved = io.load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("ReplayBufferTrainer")]
    assert torch.equal(
        state["per_rank"][0]["buffer"]["data"]["observation"], model.replay_buffer.state_dict()["data"]["observation"]
    )


def test_trainers_use_it_unless_another_checkpoint_io_is_configured(tmp_path: Path) -> None:
    from tests.conftest import tiny_ppo_run

    trainer, model, data = tiny_ppo_run(tmp_path, max_steps=1)
    trainer.fit(model, datamodule=data)
    assert type(trainer.strategy.checkpoint_io) is RLCheckpointIO


def test_checkpoints_carry_the_random_number_generators(tmp_path: Path) -> None:
    """Resuming restores torch, numpy and python RNGs as they were at the save."""
    import random

    import numpy as np

    from rl_lightning import PPO
    from tests.conftest import tiny_ppo_run

    trainer, model, data = tiny_ppo_run(tmp_path, max_steps=2, enable_checkpointing=True)
    trainer.fit(model, datamodule=data)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # what a fresh process would have
    PPO.load_from_checkpoint(path)  # no trainer: a single process's state
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_an_unwritable_checkpoint_directory_stops_the_run_before_training(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.conftest import tiny_ppo_run

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    checkpoint = ModelCheckpoint(dirpath=blocker / "checkpoints")
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[checkpoint], enable_checkpointing=True)
    with pytest.raises(ValueError, match=r"Checkpoints cannot be written to .*a-file/checkpoints"):
        trainer.fit(model, datamodule=data)
    assert model.frames == 0 and model.updates == 0
    assert blocker.read_text() == "not a directory"


def test_bad_ckpt_paths_and_checkpoints_of_other_envs_are_refused(tmp_path: Path) -> None:
    from tests.conftest import tiny_ppo_run

    trainer, model, data = tiny_ppo_run(tmp_path, max_steps=1)
    trainer.fit(model, datamodule=data)
    cartpole = tmp_path / "cartpole.ckpt"
    trainer.save_checkpoint(cartpole)

    trainer, model, data = tiny_ppo_run(tmp_path, data={"env_id": "Acrobot-v1"})
    with pytest.raises(ValueError, match=r"built for the observation_space Box.*\(4,\).*this model has Box.*\(6,\)"):
        trainer.fit(model, datamodule=data, ckpt_path=cartpole)
    trainer, model, data = tiny_ppo_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer.fit(model, datamodule=data, ckpt_path=tmp_path / "missing.ckpt")
    assert model.frames == 0


FULL_DISK = """
import resource, signal, sys, torch
from rl_lightning.checkpoint import CheckpointWriteError, RLCheckpointIO
io = RLCheckpointIO(external_bytes=int(sys.argv[2]))
io.save_checkpoint({"w": torch.zeros(10)}, sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as a full disk fails them
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    io.save_checkpoint({"w": torch.ones(100_000)}, sys.argv[1])  # 400 kB: the write fails part-way
except CheckpointWriteError as err:
    print(err)
"""


@pytest.mark.parametrize("external_bytes", [2**30, 1024], ids=["in the file", "beside the file"])
def test_a_write_that_fails_part_way_leaves_the_previous_checkpoint(tmp_path: Path, external_bytes: int) -> None:
    path = tmp_path / "last.ckpt"
    # a real failing write: the kernel's file-size limit (RLIMIT_FSIZE) in a child process
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path), str(external_bytes)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Writing the checkpoint '{path}' failed" in result.stdout and "is intact" in result.stdout
    assert "If the disk is full, free space" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file, no half-written directory
    assert torch.equal(RLCheckpointIO().load_checkpoint(path)["w"], torch.zeros(10))

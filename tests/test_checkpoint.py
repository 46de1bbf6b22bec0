"""RLCheckpointIO: atomic writes, large tensors beside the file, loading without unpickling code, damaged files
refused; the configs' best checkpoint holds weights only and last.ckpt everything a resume needs."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from rl_lightning import PPO, SAC
from rl_lightning.checkpoint import IncompleteCheckpointError, RLCheckpointIO
from tests.conftest import ROOT

UNSAFE_ADVICE = ("weights_only=False", "`weights_only` set to `False`")
"""How torch's loader words its advice to retry without weights_only, which would run code from the file."""


def _message(err: BaseException) -> str:
    """Everything a traceback of ``err`` prints: its message and the exceptions chained to it."""
    return "".join(traceback.format_exception(err))


def _data_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.data-"))


def test_round_trip_keeps_small_tensors_inline_and_large_ones_beside(tmp_path: Path) -> None:
    io = RLCheckpointIO(external_bytes=4096)
    path = tmp_path / "run.ckpt"
    checkpoint = {
        "state_dict": {"w": torch.randn(3, 3), "big": torch.randn(64, 32)},
        "callbacks": {"big": torch.randn(64, 32)},
        "buffers": [torch.arange(2000, dtype=torch.int64), (torch.ones(5000, dtype=torch.bool), 7)],
        "half": torch.randn(4096, dtype=torch.bfloat16),
        "meta": {"frames": 10, "name": "PPO"},
    }
    io.save_checkpoint(checkpoint, path)
    (data_dir,) = _data_dirs(path)
    assert len(list(data_dir.iterdir())) == 4  # the callback's big tensor, the int64 range, the bools, the bf16 one
    assert 64 * 32 * 4 < path.stat().st_size < 64 * 32 * 4 + 4096 * 2  # the model's weights stay in the file
    # so that Lightning's load_from_checkpoint and plain torch.load find every weight there
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["big"], checkpoint["state_dict"]["big"])
    loaded = io.load_checkpoint(path)
    assert loaded["meta"] == checkpoint["meta"]
    for key in ("w", "big"):
        assert torch.equal(loaded["state_dict"][key], checkpoint["state_dict"][key])
    assert torch.equal(loaded["callbacks"]["big"], checkpoint["callbacks"]["big"])
    assert torch.equal(loaded["buffers"][0], checkpoint["buffers"][0])
    assert torch.equal(loaded["buffers"][1][0], checkpoint["buffers"][1][0]) and loaded["buffers"][1][1] == 7
    assert loaded["half"].dtype == torch.bfloat16 and torch.equal(loaded["half"], checkpoint["half"])
    loaded["callbacks"]["big"].zero_()  # a private mapping: the file keeps its data
    assert torch.equal(io.load_checkpoint(path)["callbacks"]["big"], checkpoint["callbacks"]["big"])


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
    for load in (RLCheckpointIO().load_checkpoint, PPO.load_from_checkpoint):
        with pytest.raises(ValueError, match=r"Refusing to load .*argparse\.Namespace.*weights_only=True") as err:
            load(path)
        assert not any(advice in _message(err.value) for advice in UNSAFE_ADVICE)  # torch's message is left out


def test_missing_or_damaged_files_are_named(tmp_path: Path) -> None:
    io = RLCheckpointIO(external_bytes=1024)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.load_checkpoint(tmp_path / "nope.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(IncompleteCheckpointError, match=r"garbage\.ckpt' is not a complete rl_lightning checkpoint"):
        io.load_checkpoint(garbage)
    path = tmp_path / "run.ckpt"
    io.save_checkpoint({"x": torch.zeros(1024)}, path)
    (data_dir,) = _data_dirs(path)
    (data_dir / "0.bin").write_bytes(b"short")
    with pytest.raises(
        IncompleteCheckpointError, match=r"run.ckpt' is not a complete .*0\.bin' holds 5 bytes, not 4096"
    ):
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


def test_every_cut_or_changed_byte_is_refused_as_incomplete_or_loads_the_same(tmp_path: Path) -> None:
    """A checkpoint cut at any length, or with any byte of its zip directory changed (and a sample of the others),
    is refused as incomplete, or loads exactly what was saved (a byte the reader never uses, such as padding).
    torch alone loads some of these with wrong weights and words some errors as advice to drop weights_only."""
    io = RLCheckpointIO(external_bytes=1024)
    path = tmp_path / "run.ckpt"
    saved = {"state_dict": {"w": torch.randn(8, 8)}, "callbacks": {"big": torch.randn(512)}, "meta": {"frames": 10}}
    io.save_checkpoint(saved, path)
    whole = path.read_bytes()
    with zipfile.ZipFile(path) as archive:  # the zip directory starts after the last member's data
        last = max(archive.infolist(), key=lambda m: m.header_offset)
        directory = last.header_offset + 30 + len(last.filename) + len(last.extra) + last.file_size
    damaged = [whole[:length] for length in range(0, len(whole), 7)]
    for offset in [*range(0, directory, 5), *range(directory, len(whole))]:
        changed = bytearray(whole)
        changed[offset] ^= 0x11  # bit 0 (e.g. the "encrypted" flag) and bit 4 (the "directory" attribute)
        damaged.append(bytes(changed))
    refused = 0
    for content in damaged:
        path.write_bytes(content)
        try:
            loaded = io.load_checkpoint(path)
        except IncompleteCheckpointError as err:
            refused += 1
            assert str(path) in str(err) and not any(advice in _message(err) for advice in UNSAFE_ADVICE)
            continue
        assert loaded["meta"] == saved["meta"]
        assert torch.equal(loaded["state_dict"]["w"], saved["state_dict"]["w"])
        assert torch.equal(loaded["callbacks"]["big"], saved["callbacks"]["big"])
    assert refused > len(damaged) / 2


def _damage(good: Path, tmp_path: Path) -> dict[str, Path]:
    """Copies of the checkpoint ``good`` (which has a data directory), each damaged in its own way."""
    whole = good.read_bytes()
    with zipfile.ZipFile(good) as archive:
        member = max(archive.infolist(), key=lambda m: m.file_size)  # a tensor's bytes, in the middle of the file
        start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    flipped = bytearray(whole)
    for offset in range(start, start + 16):
        flipped[offset] ^= 0xFF
    contents = {"empty": b"", "cut-at-a-third": whole[: len(whole) // 3], "cut-by-1-byte": whole[:-1]}
    contents["bytes-flipped-in-a-tensor"] = bytes(flipped)
    contents["a-data-file-cut"] = whole  # the file is whole; a file of its data directory is not
    tmp_path.mkdir()
    cases = {}
    for name, content in contents.items():
        cases[name] = tmp_path / f"{name}.ckpt"
        cases[name].write_bytes(content)
    (data_dir,) = _data_dirs(good)
    copy = shutil.copytree(data_dir, tmp_path / data_dir.name)  # the name the .ckpt refers to
    data_file = sorted(copy.iterdir())[0]
    data_file.write_bytes(data_file.read_bytes()[:-4])
    return cases


def test_damaged_checkpoints_are_refused_by_fit_the_cli_and_load_from_checkpoint(tmp_path: Path) -> None:
    from rl_lightning.cli import cli
    from tests.conftest import tiny_ppo_run
    from tests.test_cli import _quick

    plugin = RLCheckpointIO(external_bytes=64)  # the optimizer's state goes into a data directory
    trainer, model, data = tiny_ppo_run(tmp_path, max_steps=1, plugins=[plugin])
    trainer.fit(model, datamodule=data)
    good = tmp_path / "good.ckpt"
    trainer.save_checkpoint(good)
    assert len(_data_dirs(good)) == 1
    for name, path in _damage(good, tmp_path / "damaged").items():
        errors: list[BaseException] = []
        trainer, model, data = tiny_ppo_run(tmp_path, max_steps=2, plugins=[RLCheckpointIO(external_bytes=64)])
        with pytest.raises(IncompleteCheckpointError) as err:
            trainer.fit(model, datamodule=data, ckpt_path=path)
        errors.append(err.value)
        assert model.frames == 0, name
        with pytest.raises(IncompleteCheckpointError) as err:
            cli(["fit", *_quick(ROOT / "configs/ppo.yaml", tmp_path / "cli"), f"--ckpt_path={path}"])
        errors.append(err.value)
        with pytest.raises(IncompleteCheckpointError) as err:  # Lightning's own loader, checked first
            PPO.load_from_checkpoint(path)
        errors.append(err.value)
        for error in errors:
            text = _message(error)
            assert f"{str(path)!r} is not a complete rl_lightning checkpoint" in str(error), name
            assert not any(advice in text for advice in UNSAFE_ADVICE), (name, text)


def test_the_configs_best_checkpoint_holds_weights_and_last_everything_to_resume(tmp_path: Path) -> None:
    """configs/sac.yaml's two ModelCheckpoints: best-*.ckpt is weights and hyperparameters (deploy, evaluate) and
    refuses to resume a fit; last.ckpt holds the optimizer, counters and replay buffer, and a run resumed from it
    starts from exactly that state."""
    from rl_lightning.cli import cli
    from tests.test_cli import _quick

    config = ROOT / "configs/sac.yaml"
    first = cli(["fit", *_quick(config, tmp_path, batches=2)])
    (best,) = tmp_path.rglob("best-*.ckpt")
    last = next(tmp_path.rglob("last.ckpt"))
    io = RLCheckpointIO()
    weights_only = io.load_checkpoint(best)
    assert not {"callbacks", "optimizer_states", "lr_schedulers"} & weights_only.keys()  # no replay buffer
    assert weights_only["hyper_parameters"]["buffer_size"] == first.model.hparams.buffer_size
    assert not _data_dirs(best)
    saved = io.load_checkpoint(last)
    (buffer,) = [v for k, v in saved["callbacks"].items() if k.startswith("ReplayBufferTrainer")]
    assert len(buffer["per_rank"][0]["buffer"]["data"]["observation"]) == 2 * 64
    assert best.stat().st_size < last.stat().st_size / 2

    policy = SAC.load_from_checkpoint(best)  # deploy: the policy without the trainer
    for name, value in weights_only["state_dict"].items():
        assert torch.equal(policy.state_dict()[name], value), name
    evaluated = cli(["validate", f"--config={config}", f"--ckpt_path={best}", *_quick(config, tmp_path)[1:]])
    assert "val/episode_return" in evaluated.trainer.callback_metrics
    with pytest.raises(ValueError, match=r"best-.*\.ckpt' holds only the model's weights.*Resume from the run's last"):
        cli(["fit", *_quick(config, tmp_path, batches=3), f"--ckpt_path={best}"])

    probe = tmp_path / "resumed"
    callback = {"class_path": "tests.probe.SaveRankState", "init_args": {"dirpath": str(probe), "at_start": True}}
    extra = [f"--ckpt_path={last}", f"--trainer.callbacks+={json.dumps(callback)}"]
    resumed_run = cli(["fit", *_quick(config, tmp_path, batches=3), *extra])
    resumed: dict[str, Any] = torch.load(probe / "rank0.pt", weights_only=True)
    assert resumed["frames"] == saved["rl_lightning"]["frames"] == 2 * 64
    for name, value in saved["state_dict"].items():
        assert torch.equal(resumed["params"][name], value), name
    for restored, written in zip(resumed["optimizers"], saved["optimizer_states"], strict=True):
        for index, state in written["state"].items():
            for key, value in state.items():
                assert torch.equal(restored["state"][index][key], value), (index, key)
    for key, value in buffer["per_rank"][0]["buffer"]["data"].items():  # bit for bit
        assert torch.equal(resumed["buffer"]["data"][key], value), key
    assert resumed_run.model.frames == 3 * 64


def test_files_ranks_staged_move_beside_the_checkpoint_and_a_failed_save_leaves_nothing(tmp_path: Path) -> None:
    """What DDP ranks do while a checkpoint is built (each writes its buffer to files of its own and hands on small
    references), then rank zero's save: the files move into ``<name>.data-<token>/rank<r>/``; leftovers of an earlier
    failed save go; a file rank zero cannot see (another node without a shared filesystem) fails the save with a
    message, leaving the previous checkpoint and no staged file."""
    from rl_lightning.checkpoint import STAGING_DIR, stage_tensors

    io = RLCheckpointIO()  # the default threshold: these small tensors move because they were staged
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"version": 1}, path)
    leftover = tmp_path / STAGING_DIR / "0123456789ab-rank1"  # a save that failed after rank 1 staged its files
    leftover.mkdir(parents=True)
    (leftover / "0.bin").write_bytes(b"stale")

    def staged() -> tuple[dict[str, Any], list[torch.Tensor]]:
        buffers = [torch.randn(16, 3), torch.randn(16, 3)]
        per_rank = []
        for rank, buffer in enumerate(buffers):
            directory = tmp_path / STAGING_DIR / f"{rank}abcdef0123{rank}-rank{rank}"
            directory.mkdir(parents=True)
            per_rank.append({"buffer": stage_tensors({"observation": buffer, "size": 16}, directory, rank)})
        return {"version": 2, "callbacks": {"ReplayBufferTrainer": {"per_rank": per_rank}}}, buffers

    checkpoint, buffers = staged()
    reference = checkpoint["callbacks"]["ReplayBufferTrainer"]["per_rank"][1]["buffer"]["observation"]
    Path(reference["rl_lightning.staged"]).unlink()  # rank 1's file is not there for rank zero
    with pytest.raises(ValueError, match=r"rank1/0\.bin', is not visible to rank zero.*a filesystem every node shares"):
        io.save_checkpoint(checkpoint, path)
    assert io.load_checkpoint(path) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no data directory, no staged file

    checkpoint, buffers = staged()
    io.save_checkpoint(checkpoint, path)
    (data_dir,) = _data_dirs(path)
    assert sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*.bin")) == ["rank0/0.bin", "rank1/1.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", data_dir.name]  # the staging folder is gone
    loaded = io.load_checkpoint(path)["callbacks"]["ReplayBufferTrainer"]["per_rank"]
    for rank in (0, 1):
        assert torch.equal(loaded[rank]["buffer"]["observation"], buffers[rank])
        assert loaded[rank]["buffer"]["size"] == 16

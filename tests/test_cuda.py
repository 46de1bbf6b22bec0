"""On a GPU: networks and learning on CUDA while the envs stay on the CPU, batches collected into page-locked
memory, one device sync per env step in the collector, and a resume on the GPU. Skipped where CUDA is not available
(CI has no GPU). Mixed precision on the GPU is in ``test_precision.py``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from tensordict import TensorDict

from rl_lightning import PPO, SAC, RLCallback, RLDataModule
from rl_lightning.collector import Collector
from rl_lightning.envs import make_vec_env
from tests.conftest import quiet_trainer, tiny_ppo_run

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class RecordDevices(RLCallback):
    """Records, during the fit (Lightning moves the module back to the CPU at its end), where each batch arrived,
    where the module's parameters were, and whether the collector pinned its batches."""

    def __init__(self) -> None:
        self.batches: list[torch.device] = []
        self.parameters: list[torch.device] = []
        self.pinned: list[bool] = []

    def on_batch_process(self, trainer: Any, module: Any, batch: TensorDict) -> None:
        self.batches.append(batch.device)
        self.parameters.append(next(module.parameters()).device)
        self.pinned.append(module.data.collector.pin_memory)

    def on_gpu(self) -> bool:
        return bool(self.batches) and all(d.type == "cuda" for d in self.batches + self.parameters)


@CUDA
def test_ppo_learns_on_the_gpu_from_pinned_cpu_batches(tmp_path: Path) -> None:
    record = RecordDevices()
    trainer, model, data = tiny_ppo_run(tmp_path, accelerator="gpu", devices=1, callbacks=[record])
    trainer.fit(model, datamodule=data)
    assert record.on_gpu() and all(record.pinned) and len(record.pinned) == 4
    assert model.frames == data.total_frames


@CUDA
def test_sac_trains_on_the_gpu(tmp_path: Path) -> None:
    data = RLDataModule("Pendulum-v1", num_envs=2, frames_per_batch=64, total_frames=256, eval_episodes=1)
    model = SAC(data.observation_space, data.action_space, batch_size=32, init_random_frames=64, hidden_sizes=[32])
    record = RecordDevices()
    trainer = quiet_trainer(tmp_path, accelerator="gpu", devices=1, val_check_interval=2, callbacks=[record])
    trainer.fit(model, datamodule=data)
    assert model.updates > 0 and record.on_gpu()


@CUDA
def test_a_pinned_collector_batch_is_page_locked() -> None:
    envs = make_vec_env("CartPole-v1", num_envs=2, seed=0)
    policy = lambda obs: {"action": torch.zeros(len(obs), dtype=torch.int64)}  # noqa: E731
    batch = Collector(envs, policy, steps_per_batch=8, pin_memory=True).collect()
    assert all(value.is_pinned() for value in batch.values(include_nested=True, leaves_only=True))
    envs.close()


@CUDA
def test_the_collector_syncs_with_the_gpu_once_per_step() -> None:
    """The action's copy back to the CPU (the envs need it) is the only sync: observations go up from pinned
    memory, the log-probability comes down with it, and the categorical draw does not check its input on the host."""
    model = PPO(*_spaces("CartPole-v1"), hidden_sizes=[16]).cuda()
    envs = make_vec_env("CartPole-v1", num_envs=4, seed=0)
    collector = Collector(envs, model.act, steps_per_batch=8, pin_memory=True)
    collector.collect()  # warm-up: CUDA context, pinned blocks, kernels
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            collector.collect()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        envs.close()
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    assert len(syncs) <= 8, [str(w.message) for w in syncs]


@CUDA
def test_a_gpu_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, accelerator="gpu", devices=1)
    trainer.fit(model, datamodule=data)
    checkpoint = tmp_path / "gpu.ckpt"
    trainer.save_checkpoint(checkpoint)
    record = RecordDevices()
    resumed, model, data = tiny_ppo_run(
        tmp_path / "resumed", data={"total_frames": 512}, accelerator="gpu", devices=1, callbacks=[record]
    )
    resumed.fit(model, datamodule=data, ckpt_path=checkpoint)
    assert model.frames == 512 and len(record.batches) == 4 and record.on_gpu()


def _spaces(env_id: str) -> tuple[Any, Any]:
    envs = make_vec_env(env_id, num_envs=1)
    spaces = envs.single_observation_space, envs.single_action_space
    envs.close()
    return spaces

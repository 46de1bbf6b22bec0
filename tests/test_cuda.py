"""On a GPU: networks and learning on CUDA while the envs stay on the CPU, batches collected into page-locked
memory, and mixed precision with gradient clipping after unscaling. The GPU cases are skipped where CUDA is not
available (CI has no GPU); clipping under bf16-mixed also runs on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tensordict import TensorDict

from rl_lightning import SAC, RLCallback, RLDataModule
from rl_lightning.collector import Collector
from rl_lightning.envs import make_vec_env
from tests.conftest import quiet_trainer, tiny_ppo_run

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class RecordBatches(RLCallback):
    """Records where each collected batch arrived and whether the collector pinned it."""

    def __init__(self) -> None:
        self.devices: list[torch.device] = []
        self.pinned: list[bool] = []

    def on_batch_process(self, trainer: Any, module: Any, batch: TensorDict) -> None:
        self.devices.append(batch.device)
        self.pinned.append(module.data.collector.pin_memory)


class RecordGradNorms(RLCallback):
    """The total gradient norm each optimizer step applied (after unscaling and clipping, which change the gradients
    in place), read by a step post-hook."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))

        module.optimizers().optimizer.register_step_post_hook(record)


@CUDA
def test_ppo_learns_on_the_gpu_from_pinned_cpu_batches(tmp_path: Path) -> None:
    record = RecordBatches()
    trainer, model, data = tiny_ppo_run(tmp_path, accelerator="gpu", devices=1, callbacks=[record])
    trainer.fit(model, datamodule=data)
    assert next(model.parameters()).device.type == "cuda"
    assert all(d.type == "cuda" for d in record.devices) and all(record.pinned) and len(record.pinned) == 4
    assert model.frames == data.total_frames


@pytest.mark.parametrize(
    ("accelerator", "precision"),
    [("cpu", "bf16-mixed"), pytest.param("gpu", "16-mixed", marks=CUDA), pytest.param("gpu", "bf16-mixed", marks=CUDA)],
)
def test_mixed_precision_clips_gradients_after_unscaling(tmp_path: Path, accelerator: str, precision: str) -> None:
    norms = RecordGradNorms()
    trainer, model, data = tiny_ppo_run(
        tmp_path,
        model={"max_grad_norm": 1e-3},
        accelerator=accelerator,
        devices=1,
        precision=precision,
        callbacks=[norms],
    )
    trainer.fit(model, datamodule=data)
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    assert (scaler is not None) == (precision == "16-mixed")
    # unscaled, then clipped: every applied step's norm is at most max_grad_norm (clipping the scaled gradients
    # would leave norms of max_grad_norm / scale after unscaling, far below it)
    applied = [n for n in norms.norms if n == n and n != float("inf")]  # the scaler skips steps with inf gradients
    assert applied and all(n <= 1e-3 * 1.01 for n in applied)
    assert max(applied) > 1e-3 * 0.5


@CUDA
def test_sac_trains_on_the_gpu(tmp_path: Path) -> None:
    data = RLDataModule("Pendulum-v1", num_envs=2, frames_per_batch=64, total_frames=256, eval_episodes=1)
    model = SAC(data.observation_space, data.action_space, batch_size=32, init_random_frames=64, hidden_sizes=[32])
    trainer = quiet_trainer(tmp_path, accelerator="gpu", devices=1, val_check_interval=2)
    trainer.fit(model, datamodule=data)
    assert model.updates > 0 and next(model.parameters()).device.type == "cuda"


@CUDA
def test_a_pinned_collector_batch_is_page_locked() -> None:
    envs = make_vec_env("CartPole-v1", num_envs=2, seed=0)
    policy = lambda obs: {"action": torch.zeros(len(obs), dtype=torch.int64)}  # noqa: E731
    batch = Collector(envs, policy, steps_per_batch=8, pin_memory=True).collect()
    assert all(value.is_pinned() for value in batch.values(include_nested=True, leaves_only=True))
    envs.close()

"""Offline RL with torchrl's IQLLoss: a dataset recorded locally by a noisy rl_lightning TD3, then IQL trained on it
through OfflineDataModule (no env stepped for training; evaluation episodes in the env). Runs in the torchrl
environment (``bash scripts/setup_torchrl.sh``), skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn

pytest.importorskip(
    "torchrl", reason="torchrl is not importable here: run these tests in .venv-torchrl (scripts/setup_torchrl.sh)"
)

from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import IQLLoss, SoftUpdate

from rl_lightning import TD3, RLDataModule
from rl_lightning.interop.torchrl_module import TorchRLModule
from rl_lightning.offline import OfflineDataModule, generate_dataset
from tests.conftest import quiet_trainer

ACTION_BOUND = 2.0  # Pendulum's torque limit
PENDULUM = gym.make("Pendulum-v1")


def mlp(inputs: int, outputs: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


class QNetwork(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(3 + 1, 1)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([observation, action], -1))


def iql_parts(temperature: float = 3.0, expectile: float = 0.7, tau: float = 0.005) -> tuple[IQLLoss, SoftUpdate]:
    """IQL for Pendulum as a torchrl user writes it: a TanhNormal actor, a Q network (twinned by the loss) and a
    state-value network, the loss and its soft target update.

    The actor's support reaches a little past the torque limit: a noisy behaviour policy's actions are clipped to the
    bounds, so many stored actions lie exactly on them, where a TanhNormal bounded there has no density (its
    log-probability, which IQL's actor loss weighs, would be -inf). The env takes the evaluated actions clipped to the
    bounds (the collector and ``RLModule.forward`` clip them)."""
    support = ACTION_BOUND * 1.05
    actor = ProbabilisticActor(
        TensorDictModule(nn.Sequential(mlp(3, 2), NormalParamExtractor()), ["observation"], ["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -support, "high": support},
    )
    qvalue = ValueOperator(QNetwork(), in_keys=["observation", "action"])
    value = ValueOperator(mlp(3, 1), in_keys=["observation"])
    loss = IQLLoss(actor, qvalue, value, temperature=temperature, expectile=expectile, loss_function="l2")
    loss.make_value_estimator(gamma=0.99)
    return loss, SoftUpdate(loss, tau=tau)


def behaviour_dataset(path: Path, tmp_path: Path, noise_std: float) -> float:
    """Trains rl_lightning's TD3 on Pendulum for 8,000 frames (configs/td3.yaml's settings; its deterministic policy
    returns about -190) and records 9,600 transitions of it with Gaussian noise; returns the data's mean return."""
    pl.seed_everything(0)
    data = RLDataModule("Pendulum-v1", num_envs=4, frames_per_batch=64, total_frames=8_000, seed=0)
    td3 = TD3(
        data.observation_space, data.action_space, lr=1e-3, batch_size=128, buffer_size=8_000,
        init_random_frames=1_000, tau=0.02, hidden_sizes=[64, 64], exploration_noise=0.1,
    )  # fmt: skip
    quiet_trainer(tmp_path / "td3", limit_val_batches=0).fit(td3, datamodule=data)
    info = generate_dataset(td3, path, "Pendulum-v1", transitions=9_600, noise_std=noise_std, num_envs=8, seed=0)
    return info.behaviour_mean_return


def fit_iql(
    dataset: Path, run: Path, total_frames: int, ckpt_path: str | None = None, checkpoint: ModelCheckpoint | None = None
) -> tuple[pl.Trainer, TorchRLModule, IQLLoss]:
    """IQL on ``dataset``, batches of 128 transitions, 2 updates each."""
    pl.seed_everything(0)
    data = OfflineDataModule(str(dataset), frames_per_batch=128, total_frames=total_frames,
                             eval_episodes=1, eval_envs=1)  # fmt: skip
    loss, updater = iql_parts()
    model = TorchRLModule(data.observation_space, data.action_space, loss, batch_size=64, target_updater=updater)
    callbacks = [] if checkpoint is None else [checkpoint]
    trainer = quiet_trainer(run, log_every_n_steps=1, callbacks=callbacks, enable_checkpointing=bool(callbacks))
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model, loss


def test_iql_trains_on_stored_batches_with_its_target_updates_and_resumes_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    behaviour = TD3(PENDULUM.observation_space, PENDULUM.action_space, hidden_sizes=[8])
    generate_dataset(behaviour, tmp_path / "data", "Pendulum-v1", transitions=400, noise_std=0.5, num_envs=2)
    before = iql_parts()[0].target_qvalue_network_params.clone()  # what fit_iql builds, after the same seed

    trainer, whole, loss = fit_iql(
        tmp_path / "data", tmp_path / "whole", total_frames=640
    )  # 5 batches: into a second epoch
    assert whole.frames == 640 and whole.updates == 10 and whole.episodes == 0
    assert {"train/loss_actor", "train/loss_qvalue", "train/loss_value", "val/episode_return"} <= set(
        trainer.callback_metrics
    )
    assert not any(name.startswith("rollout/") for name in trainer.callback_metrics)  # no episodes in stored data
    targets, online = loss.target_qvalue_network_params, loss.qvalue_network_params
    assert not (targets == before).all() and not (targets == online.data).all()  # SoftUpdate moved them part-way

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit_iql(tmp_path / "data", tmp_path / "first", total_frames=256, checkpoint=checkpoint)  # stops mid-epoch
    _, resumed, _ = fit_iql(
        tmp_path / "data", tmp_path / "rest", total_frames=640, ckpt_path=checkpoint.last_model_path
    )
    assert resumed.updates == whole.updates
    for key, value in whole.state_dict().items():  # networks and target parameters: the same run
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.learning
def test_iql_trained_offline_beats_the_noisy_behaviour_policy_on_pendulum(tmp_path: Path) -> None:
    """IQL on the transitions of a TD3 acting with Gaussian noise of twice its half-range (std 4 N m) returns at least
    200 more than the data's episodes in deterministic evaluation, before the budget of 4,000 updates runs out."""
    behaviour = behaviour_dataset(tmp_path / "data", tmp_path, noise_std=2.0)
    assert behaviour < -500  # the noise makes the data poor (about -760): there is something to improve on

    pl.seed_everything(0)
    data = OfflineDataModule(
        str(tmp_path / "data"), frames_per_batch=2_560, total_frames=4_000 * 256, eval_episodes=10, eval_envs=10
    )
    loss, updater = iql_parts()
    model = TorchRLModule(
        data.observation_space, data.action_space, loss, lr=1e-3, batch_size=256, target_updater=updater
    )
    target = behaviour + 200.0
    stop = EarlyStopping("val/episode_return", mode="max", stopping_threshold=target, patience=10**6,
                         check_on_train_epoch_end=False)  # fmt: skip
    trainer = quiet_trainer(tmp_path / "iql", val_check_interval=25, callbacks=[stop])  # every 250 updates
    trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics["val/episode_return"] >= target
    assert model.frames < data.total_frames and model.episodes == 0  # no env episodes in training

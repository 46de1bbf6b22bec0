"""The off- and on-policy bases: replay samples, the callbacks they add (a listed one used or refused), target
updates that skip skipped updates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from tensordict import TensorDict

from rl_lightning import SAC, ReplayBuffer, RLCallback, RLDataModule
from rl_lightning.callbacks import ReplayBufferTrainer, TargetNetUpdaterHook, UTDRHook
from rl_lightning.replay import INDEX
from tests.conftest import quiet_trainer, tiny_ppo_run

OBSERVATIONS = gym.spaces.Box(-1.0, 1.0, (3,))
ACTIONS = gym.spaces.Box(-2.0, 2.0, (1,))


def sac_and_data(**model: Any) -> tuple[SAC, RLDataModule]:
    pl.seed_everything(0)
    data = RLDataModule("Pendulum-v1", num_envs=2, frames_per_batch=32, total_frames=128, eval_episodes=2)
    sac = SAC(
        data.observation_space,
        data.action_space,
        **{"hidden_sizes": [16], "batch_size": 16, "buffer_size": 1000, "init_random_frames": 32, **model},
    )
    return sac, data


def of_type(trainer: pl.Trainer, kind: type) -> list[Any]:
    return [cb for cb in trainer.callbacks if isinstance(cb, kind)]  # type: ignore[attr-defined]


class Minibatches(RLCallback):
    def __init__(self) -> None:
        self.seen: list[TensorDict] = []

    def on_process_optim_batch(self, trainer: Any, module: Any, batch: TensorDict) -> None:
        self.seen.append(batch)


def test_minibatches_are_replay_samples_of_batch_size(tmp_path: Path) -> None:
    recorder = Minibatches()
    model, data = sac_and_data(utd_ratio=0.25)
    quiet_trainer(tmp_path, callbacks=[recorder]).fit(model, datamodule=data)
    # 4 batches of 32 transitions, the first one random: 3 * 32 * 0.25 updates, each on its own replay sample
    assert len(recorder.seen) == model.updates == 24
    for sample in recorder.seen:
        assert sample.batch_size == torch.Size([16]) and INDEX in sample.keys()
    assert len({tuple(sample[INDEX].tolist()) for sample in recorder.seen}) == 24  # fresh draws, not one reused


def test_a_listed_callback_that_does_what_the_model_says_is_used_not_duplicated(tmp_path: Path) -> None:
    model, data = sac_and_data()
    buffer_hook = ReplayBufferTrainer(model.replay_buffer)
    target_hook = TargetNetUpdaterHook(tau=model.target_updater.tau, interval=model.target_updater.interval)
    utd = UTDRHook()
    trainer = quiet_trainer(tmp_path, callbacks=[buffer_hook, target_hook, utd])
    trainer.fit(model, datamodule=data)
    assert of_type(trainer, ReplayBufferTrainer) == [buffer_hook]
    assert of_type(trainer, TargetNetUpdaterHook) == [target_hook]
    assert of_type(trainer, UTDRHook) == [utd]
    assert len(model.replay_buffer) == 128
    assert target_hook.updates == model.updates > 0  # the listed hook updated the targets
    assert model.target_updater.updates == 0


def test_a_second_fit_keeps_one_of_each_callback(tmp_path: Path) -> None:
    model, data = sac_and_data()
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    data.total_frames = 192
    trainer.fit_loop.epoch_loop.max_steps = -1
    trainer.fit(model, datamodule=data)
    for kind in (ReplayBufferTrainer, TargetNetUpdaterHook, UTDRHook):
        assert len(of_type(trainer, kind)) == 1, kind


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        (
            lambda model: ReplayBufferTrainer(ReplayBuffer(1000)),
            r"lists a ReplayBufferTrainer with a replay buffer of its own, but SAC samples its minibatches from the "
            r"buffer built from its arguments.*ReplayBufferTrainer\(model.replay_buffer\)",
        ),
        (
            lambda model: TargetNetUpdaterHook(tau=1.0, interval=100),
            r"lists TargetNetUpdaterHook\(tau=1.0, interval=100\), but SAC updates its targets with tau=0.005, "
            r"target_update_interval=1.*Set the model's tau and target_update_interval",
        ),
    ],
)
def test_a_listed_callback_that_contradicts_the_model_is_refused_before_anything_is_written(
    tmp_path: Path, listed: Any, message: str
) -> None:
    model, data = sac_and_data()
    trainer = quiet_trainer(tmp_path, callbacks=[listed(model)], logger=CSVLogger(tmp_path / "logs"))
    with pytest.raises(ValueError, match=message):
        trainer.fit(model, datamodule=data)
    assert not (tmp_path / "logs").exists()
    assert len(model.replay_buffer) == 0


@pytest.mark.parametrize("listed", [ReplayBufferTrainer(ReplayBuffer(100)), TargetNetUpdaterHook()])
def test_on_policy_algorithms_refuse_replay_and_target_callbacks(tmp_path: Path, listed: pl.Callback) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[listed], logger=CSVLogger(tmp_path / "logs"))
    with pytest.raises(ValueError, match=rf"lists a {type(listed).__name__}, but PPO trains on the batch it just"):
        trainer.fit(model, datamodule=data)
    assert not (tmp_path / "logs").exists()


def shifted(model: SAC) -> None:
    with torch.no_grad():
        for p in model.critics.parameters():
            p.add_(1.0)


def targets_equal_critics(model: SAC) -> bool:
    pairs = zip(model.critics.parameters(), model.target_critics.parameters(), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


def test_soft_target_updates_every_interval_updates() -> None:
    model = SAC(OBSERVATIONS, ACTIONS, hidden_sizes=[8])
    hook = TargetNetUpdaterHook(tau=0.25, interval=3)
    before = [p.clone() for p in model.target_critics.parameters()]
    shifted(model)
    for _ in range(2):
        hook.on_post_optim(None, model)  # type: ignore[arg-type]
        assert all(torch.equal(a, b) for a, b in zip(before, model.target_critics.parameters(), strict=True))
    hook.on_post_optim(None, model)  # type: ignore[arg-type]
    for old, new, online in zip(before, model.target_critics.parameters(), model.critics.parameters(), strict=True):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online)


def test_skipped_updates_do_not_count_towards_target_updates() -> None:
    model = SAC(OBSERVATIONS, ACTIONS, hidden_sizes=[8])
    hook = TargetNetUpdaterHook(tau=1.0, interval=2)
    shifted(model)
    hook.on_post_optim(None, model)  # type: ignore[arg-type]  # applied update 1
    model.skipped_updates += 1  # update 2 had NaN gradients and was skipped (nonfinite: skip)
    hook.on_post_optim(None, model)  # type: ignore[arg-type]
    assert hook.updates == 1 and not targets_equal_critics(model)
    hook.on_post_optim(None, model)  # type: ignore[arg-type]  # applied update 2: the copy
    assert hook.updates == 2 and targets_equal_critics(model)


def test_target_updater_refuses_a_module_without_target_networks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"TargetNetUpdaterHook updates target networks, but PPO has none"):
        TargetNetUpdaterHook().setup(None, tiny_ppo_run(tmp_path)[1], "fit")  # type: ignore[arg-type]

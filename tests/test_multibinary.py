"""MultiBinary actions for PPO and A2C: each bit an independent Bernoulli, through a real env and a checkpoint.

``ThreeBits-v0`` (made with ``RLDataModule("tests.test_multibinary:ThreeBits-v0")``): the observation shows three
target bits; the agent sets three bits (``MultiBinary(3)``) and earns 1/3 for each one that matches. Episodes last 4
steps with new targets each: 4 is perfect, a uniform policy expects 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from rl_lightning import A2C, PPO, RLDataModule, RLModule
from rl_lightning.collector import evaluate
from rl_lightning.envs import make_vec_env
from tests.conftest import quiet_trainer

ENV_ID = "tests.test_multibinary:ThreeBits-v0"


class ThreeBitsEnv(gym.Env):
    """Copy the three target bits the observation shows; 1/3 reward per match, 4 steps an episode."""

    observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.MultiBinary(3)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return self._new_target(), {}

    def step(self, action: Any) -> Any:
        assert self.action_space.contains(np.asarray(action, dtype=np.int8)) and np.asarray(action).shape == (3,)
        reward = float(np.sum(np.asarray(action) == self.target)) / 3
        self.t += 1
        return self._new_target(), reward, self.t >= 4, False, {}

    def _new_target(self) -> np.ndarray:
        self.target = self.np_random.integers(0, 2, size=3)
        return self.target.astype(np.float32)


gym.register("ThreeBits-v0", entry_point=ThreeBitsEnv)


def test_the_env_follows_the_gymnasium_api() -> None:
    check_env(ThreeBitsEnv(), skip_render_check=True)


@pytest.mark.learning
@pytest.mark.parametrize("cls", [PPO, A2C])
def test_learns_to_set_the_bits_and_reloads(tmp_path: Path, cls: type[RLModule]) -> None:
    """A fit learns the bits (well above the uniform policy's 2 of 4), its batches hold [num_envs, T, 3] 0/1
    actions, evaluation hands the env int64 bit vectors, and the checkpoint reloads to the same policy."""
    pl.seed_everything(0)
    frames_per_batch = 128 if cls is PPO else 32  # A2C: one update a batch
    data = RLDataModule(ENV_ID, num_envs=4, frames_per_batch=frames_per_batch, total_frames=4096, eval_episodes=8)
    arguments = {"n_epochs": 4, "batch_size": 32, "lr": 3e-3} if cls is PPO else {"lr": 3e-3, "gamma": 0.5}
    model = cls(data.observation_space, data.action_space, hidden_sizes=[32], **arguments)  # type: ignore[call-arg]
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    action = model.act(torch.eye(3), deterministic=True)["action"]
    assert action.dtype == torch.int64 and torch.equal(action, torch.eye(3, dtype=torch.int64))
    envs = make_vec_env(ENV_ID, num_envs=2, seed=3)
    returns = evaluate(envs, lambda obs: model.act(obs, deterministic=True), num_episodes=4, seed=3)["episode_return"]
    envs.close()
    assert returns.mean().item() > 3.9
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = type(model).load_from_checkpoint(path)
    assert torch.equal(reloaded.act(torch.eye(3), deterministic=True)["action"], action)

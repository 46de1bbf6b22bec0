"""Dict observations through every algorithm: one encoder per key (nested keys too), replay buffers of nested
TensorDicts, checkpoints and resume, and PPO learning ``rl_lightning.toy_envs:DictTarget-v0``, whose keys only
together give the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tensordict import TensorDict

import rl_lightning
from rl_lightning import PPO, RLDataModule, keys
from rl_lightning.checkpoint import RLCheckpointIO
from tests.conftest import quiet_trainer

DICT_TARGET = "rl_lightning.toy_envs:DictTarget-v0"
DICT_PENDULUM = "tests.test_dict_observations:DictPendulum-v0"
OFF_POLICY = {"batch_size": 32, "buffer_size": 1000, "init_random_frames": 64, "hidden_sizes": [16]}
ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "A2C": (DICT_TARGET, {"hidden_sizes": [16]}),
    "PPO": (DICT_TARGET, {"n_epochs": 2, "batch_size": 32, "hidden_sizes": [16], "normalize_observations": True}),
    "DQN": (DICT_TARGET, {**OFF_POLICY, "target_update_interval": 4, "n_step": 3}),
    "SAC": (DICT_PENDULUM, {**OFF_POLICY, "prioritized": True}),
    "TD3": (DICT_PENDULUM, OFF_POLICY),
    "DDPG": (DICT_PENDULUM, OFF_POLICY),
}


class DictPendulum(gym.ObservationWrapper):
    """Pendulum-v1 with its observation split into a nested Dict: ``{"angle": {"cos_sin": (2,)}, "velocity": (1,)}``."""

    def __init__(self, env: gym.Env | None = None) -> None:
        super().__init__(env if env is not None else gym.make("Pendulum-v1"))
        self.observation_space = gym.spaces.Dict(
            {
                "angle": gym.spaces.Dict({"cos_sin": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}),
                "velocity": gym.spaces.Box(-8.0, 8.0, (1,), np.float32),
            }
        )

    def observation(self, observation: np.ndarray) -> dict[str, Any]:
        return {"angle": {"cos_sin": observation[:2]}, "velocity": observation[2:]}


gym.register("DictPendulum-v0", entry_point=DictPendulum, max_episode_steps=200)


def observations(space: gym.spaces.Dict, count: int = 4) -> TensorDict:
    space.seed(0)
    samples = [space.sample() for _ in range(count)]
    return TensorDict.from_dict(
        {key: _stack([s[key] for s in samples]) for key in space.spaces}, batch_size=[count], auto_batch_size=False
    )


def _stack(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {key: _stack([v[key] for v in values]) for key in values[0]}
    return torch.as_tensor(np.stack(values))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_trains_on_dict_observations_and_reloads(tmp_path: Path, name: str) -> None:
    env, options = ALGORITHMS[name]
    pl.seed_everything(0)
    data = RLDataModule(env, num_envs=2, frames_per_batch=32, total_frames=192, eval_episodes=2)
    model = getattr(rl_lightning, name)(data.observation_space, data.action_space, **options)
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    assert model.updates > 0 and "val/episode_return" in trainer.callback_metrics
    if hasattr(model, "replay_buffer"):  # nested TensorDicts in, nested TensorDicts out
        sample = model.replay_buffer.sample(4)
        assert set(sample[keys.NEXT_OBSERVATION].keys(include_nested=True, leaves_only=True)) == set(
            observations(data.observation_space)[:1].keys(include_nested=True, leaves_only=True)
        )
    if options.get("normalize_observations"):  # the vector key's statistics; the discrete one is one-hot encoded
        assert model.encoder.encoders["sensors"].encoders["flip"].count.item() == 192  # type: ignore[index]
    obs = observations(data.observation_space)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = type(model).load_from_checkpoint(path)
    assert torch.equal(reloaded.act(obs, deterministic=True)["action"], model.act(obs, deterministic=True)["action"])


def test_the_encoder_reads_every_key_of_a_nested_dict() -> None:
    """Changing any leaf of the observation changes the features; the features are the leaves' encodings
    concatenated in the space's key order (goal one-hot, then the sensors)."""
    space = gym.make(DICT_TARGET).observation_space
    model = PPO(space, gym.spaces.Discrete(4), hidden_sizes=[8])
    obs = TensorDict({"goal": torch.tensor([2]), "sensors": {"flip": torch.tensor([[0.5, -0.25, 1.0]])}}, [1])
    assert model.encoder(obs).tolist() == [[0.0, 0.0, 1.0, 0.0, 0.5, -0.25, 1.0]]


def test_a_dqn_run_on_dict_observations_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """The replay buffer's nested observations, the networks and the counters come back from the checkpoint."""
    env, options = ALGORITHMS["DQN"]

    def run(total_frames: int, ckpt_path: str | None = None) -> tuple[pl.Trainer, rl_lightning.RLModule]:
        pl.seed_everything(0)
        data = RLDataModule(env, num_envs=2, frames_per_batch=32, total_frames=total_frames, eval_episodes=2)
        model = rl_lightning.DQN(data.observation_space, data.action_space, **options)
        checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = quiet_trainer(
            tmp_path, enable_checkpointing=True, callbacks=[checkpoints], plugins=[RLCheckpointIO()]
        )
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return trainer, model

    _, first = run(128)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    _, resumed = run(256, str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.frames == 256 and resumed.updates > first.updates
    # The checkpoint's transitions and the resumed run's: episodes of 8 steps end with every 16-step batch, so no n-step
    # window is held back; a buffer not restored would hold the resumed run's 128 alone.
    assert len(first.replay_buffer) == 128 and len(resumed.replay_buffer) == 256
    assert saved["rl_lightning"]["frames"] == 128


@pytest.mark.learning
def test_ppo_learns_a_task_spread_over_the_keys_of_a_dict(tmp_path: Path) -> None:
    """The right action is the goal key or its mirror, as a sensor key says: a random policy scores 2 of 8."""
    pl.seed_everything(0)
    data = RLDataModule(DICT_TARGET, num_envs=8, frames_per_batch=256, total_frames=8192, eval_episodes=16)
    model = PPO(
        data.observation_space,
        data.action_space,
        lr=1e-3,
        anneal_lr=False,
        gamma=0.5,
        hidden_sizes=[64, 64],
        activation="relu",
    )
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, verbose=False)
    assert trainer.callback_metrics["val/episode_return"] >= 7.5

"""Dict observations on the data side: the collector, evaluation, the RLDataModule under a real Trainer, nested keys
in SelectKeys and LogScalar, and the refusal of spaces the collector cannot store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rl_lightning import keys
from rl_lightning.callbacks import LogScalar, SelectKeys
from rl_lightning.collector import Collector, evaluate, observation_leaves
from rl_lightning.data import RLDataModule
from rl_lightning.envs import make_vec_env
from rl_lightning.spaces import space_from_dict
from tests.conftest import quiet_trainer
from tests.episode_env import EpisodeStepEnv

DICT_TARGET = "rl_lightning.toy_envs:DictTarget-v0"


class DictEpisodeStepEnv(EpisodeStepEnv):
    """A nested Dict observation whose every leaf encodes the episode id and the step, to check that no batch entry
    ever joins two episodes (EpisodeStep-v0's episodes, in a Dict).

    ``{"ids": Box (2,) float32 = [episode, step], "code": Discrete = episode * 100 + step,
    "nested": {"image": Box uint8 (2, 2, 1) = [[episode % 256, episode // 256], [step, 0]]}}``. Episodes last 3 to 9
    steps (drawn at reset) and end terminated or truncated at random; the reward is the step.
    """

    observation_space = gym.spaces.Dict(
        {
            "ids": gym.spaces.Box(0.0, np.inf, (2,), np.float32),
            "code": gym.spaces.Discrete(10**9),
            "nested": gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (2, 2, 1), np.uint8)}),
        }
    )
    action_space = gym.spaces.Discrete(2)

    def _obs(self) -> dict[str, Any]:
        image = np.array([[self.episode % 256, self.episode // 256], [self.t, 0]], dtype=np.uint8)[..., None]
        return {
            "ids": np.array([self.episode, self.t], dtype=np.float32),
            "code": self.episode * 100 + self.t,
            "nested": {"image": image},
        }


class TupleEnv(gym.Env):
    observation_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(0, 1, (2,))))
    action_space = gym.spaces.Discrete(2)


class DictOfTupleEnv(gym.Env):
    observation_space = gym.spaces.Dict({"pair": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2)))})
    action_space = gym.spaces.Discrete(2)


gym.register("DictEpisodeStep-v0", entry_point=DictEpisodeStepEnv)
gym.register("TupleObs-v0", entry_point=TupleEnv)
gym.register("DictOfTupleObs-v0", entry_point=DictOfTupleEnv)
EPISODE_STEP = f"{__name__}:DictEpisodeStep-v0"


def random_actions(obs: TensorDict) -> dict[str, torch.Tensor]:
    assert isinstance(obs, TensorDict), f"the policy got {type(obs).__name__}, expected a TensorDict"
    return {keys.ACTION: torch.randint(0, 2, obs.batch_size)}


def answer(obs: TensorDict, deterministic: bool = False) -> dict[str, torch.Tensor]:
    """DictTarget's right action: ``goal`` when ``flip[0] > 0``, else ``3 - goal`` (needs both keys)."""
    goal = obs["goal"]
    return {keys.ACTION: torch.where(obs["sensors", "flip"][:, 0] > 0, goal, 3 - goal)}


def decode(observation: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(episode, step)`` of every observation, after checking that all three leaves agree."""
    episode, step = observation["ids"][..., 0].long(), observation["ids"][..., 1].long()
    assert torch.equal(observation["code"], episode * 100 + step)
    image = observation["nested", "image"].long()
    assert torch.equal(image[..., 0, 0, 0] + 256 * image[..., 0, 1, 0], episode)
    assert torch.equal(image[..., 1, 0, 0], step)
    return episode, step


def test_observation_leaves_follow_the_nested_space() -> None:
    leaves = observation_leaves(DictEpisodeStepEnv.observation_space)
    assert leaves == [  # gymnasium's Dict sorts the keys of a plain dict
        (("code",), (), torch.int64),
        (("ids",), (2,), torch.float32),
        (("nested", "image"), (2, 2, 1), torch.uint8),
    ]
    assert observation_leaves(gym.spaces.Box(0, 1, (3,))) == [((), (3,), torch.float32)]


def test_dict_batch_follows_the_data_contract() -> None:
    envs = make_vec_env(DICT_TARGET, num_envs=3, seed=0)
    seen: list[TensorDict] = []

    def policy(obs: TensorDict) -> dict[str, torch.Tensor]:
        seen.append(obs.clone())
        return answer(obs)

    collector = Collector(envs, policy, steps_per_batch=10)
    collector.reset(seed=0)
    batch = collector.collect()
    envs.close()

    assert batch.batch_size == (3, 10)
    for key in (keys.OBSERVATION, keys.NEXT_OBSERVATION):
        observation = batch[key]
        assert isinstance(observation, TensorDict) and observation.batch_size == (3, 10)
        assert observation["goal"].shape == (3, 10) and observation["goal"].dtype == torch.int64
        assert observation["sensors"].batch_size == (3, 10)
        assert observation["sensors", "flip"].shape == (3, 10, 3)
        assert observation["sensors", "flip"].dtype == torch.float32
    # The policy saw, at each step, a TensorDict [num_envs] of exactly the stored observations.
    assert all(obs.batch_size == (3,) for obs in seen)
    assert (torch.stack(seen, dim=1) == batch[keys.OBSERVATION]).all()
    # Reading both keys earns 1 at every step: the observations the policy got were the env's.
    assert (batch[keys.NEXT_REWARD] == 1.0).all()
    # DictTarget's episodes are 8 steps long: step 7 ends them truncated, with return 8.
    assert batch[keys.NEXT_TRUNCATED][:, 7].all() and not batch[keys.NEXT_TRUNCATED][:, :7].any()
    assert (batch[keys.NEXT_EPISODE_RETURN][:, 7] == 8.0).all()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_dict_observations_never_mix_episodes(vectorization: Any) -> None:
    envs = make_vec_env(EPISODE_STEP, num_envs=3, vectorization=vectorization)
    collector = Collector(envs, random_actions, steps_per_batch=7)
    collector.reset(seed=1)
    try:
        batch = torch.cat([collector.collect() for _ in range(5)], dim=1)
    finally:
        envs.close()

    assert batch[keys.OBSERVATION, "nested", "image"].dtype == torch.uint8  # images stay uint8
    episode, step = decode(batch[keys.OBSERVATION])
    next_episode, next_step = decode(batch[keys.NEXT_OBSERVATION])
    done = batch[keys.NEXT_DONE][..., 0]
    assert done.sum() >= 10  # enough episode ends to test them
    # The next observation, the final one included, is the same episode's next step.
    assert torch.equal(next_episode, episode) and torch.equal(next_step, step + 1)
    # Within an episode the next observation is the next step's observation; after an end a new episode starts.
    same = ~done[:, :-1]
    assert torch.equal(episode[:, 1:][same], next_episode[:, :-1][same])
    assert torch.equal(step[:, 1:][same], next_step[:, :-1][same])
    assert (step[:, 1:][~same] == 0).all() and (episode[:, 1:][~same] != episode[:, :-1][~same]).all()
    # is_init marks exactly the first observations of episodes; the statistics are those of the ended episode.
    assert torch.equal(batch[keys.IS_INIT][..., 0], step == 0)
    assert torch.equal(batch[keys.NEXT_EPISODE_LENGTH][..., 0][done], next_step[done])
    expected_return = (next_step * (next_step + 1) // 2).float()  # rewards 1 + 2 + ... + length
    assert torch.equal(batch[keys.NEXT_EPISODE_RETURN][..., 0][done], expected_return[done])


def test_evaluate_gives_the_policy_dict_observations() -> None:
    envs = make_vec_env(DICT_TARGET, num_envs=2)
    result = evaluate(envs, answer, num_episodes=3, seed=0)
    envs.close()
    assert result[keys.EPISODE_RETURN].tolist() == [8.0, 8.0, 8.0]  # every step answered right
    assert result[keys.EPISODE_LENGTH].tolist() == [8, 8, 8]


class DictAgent(pl.LightningModule):
    """The smallest module RLDataModule collects for: a fixed policy that reads both keys of DictTarget's
    observations, and a training step that records the batches."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.batches: list[TensorDict] = []
        self.eval_returns: list[float] = []

    def act(self, observation: TensorDict, deterministic: bool = False) -> dict[str, torch.Tensor]:
        assert isinstance(observation, TensorDict)
        return answer(observation)

    def training_step(self, batch: TensorDict) -> None:
        self.frames += batch.numel()
        self.batches.append(batch)

    def validation_step(self, batch: TensorDict) -> None:
        self.eval_returns.extend(batch[keys.EPISODE_RETURN].tolist())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_data_module_serves_dict_batches_to_a_real_trainer(tmp_path: Path) -> None:
    data = RLDataModule(DICT_TARGET, num_envs=2, frames_per_batch=32, total_frames=96, eval_episodes=4, eval_envs=2)
    assert isinstance(data.observation_space, gym.spaces.Dict)
    assert space_from_dict(data.spaces["observation"]) == data.observation_space  # what the CLI links into models
    agent = DictAgent()
    quiet_trainer(tmp_path, max_epochs=1, val_check_interval=3, num_sanity_val_steps=0).fit(agent, datamodule=data)

    assert len(agent.batches) == 3
    for batch in agent.batches:
        assert batch.batch_size == (2, 16)
        assert batch[keys.OBSERVATION, "sensors", "flip"].shape == (2, 16, 3)
        assert (batch[keys.NEXT_REWARD] == 1.0).all()
    assert agent.eval_returns == [8.0] * 4  # evaluation gave the policy Dict observations too
    assert RLDataModule(**data.hparams).observation_space == data.observation_space  # rebuilt from a checkpoint


@pytest.mark.parametrize(
    ("env_id", "where"),
    [("TupleObs-v0", "a Tuple observation space ("), ("DictOfTupleObs-v0", "at key 'pair' of its Dict")],
)
def test_unsupported_observation_spaces_are_refused_with_the_fix(env_id: str, where: str) -> None:
    with pytest.raises(ValueError, match="FlattenObservation") as info:
        RLDataModule(f"{__name__}:{env_id}", num_envs=2, frames_per_batch=8, total_frames=8)
    assert where in str(info.value) and "ObservationWrapper that turns it into a Dict" in str(info.value)


def test_select_keys_and_log_scalar_take_dotted_keys_of_dict_observations() -> None:
    envs = make_vec_env(DICT_TARGET, num_envs=2, seed=0)
    batch = Collector(envs, answer, steps_per_batch=4).collect()
    envs.close()

    selected = SelectKeys(["observation.sensors.flip", "next.reward"]).select(batch)
    assert sorted(selected.keys(include_nested=True, leaves_only=True)) == [
        ("next", "reward"),
        ("observation", "sensors", "flip"),
    ]
    logged = LogScalar("observation.sensors.flip", reduction="max").on_pre_steps_log(None, None, batch)  # type: ignore[arg-type]
    assert logged is not None
    assert logged["rollout/observation.sensors.flip"] == batch["observation", "sensors", "flip"].max()
    with pytest.raises(ValueError, match=r"observation\.sensors\.flip"):  # the message lists the leaves
        SelectKeys(["observation.sensors.missing"]).select(batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_dict_batches_and_step_observations() -> None:
    envs = make_vec_env(DICT_TARGET, num_envs=2, seed=0)
    pinned: list[bool] = []

    def policy(obs: TensorDict) -> dict[str, torch.Tensor]:
        pinned.extend(leaf.is_pinned() and leaf.is_contiguous() for leaf in obs.values(True, True))
        return answer(obs)

    batch = Collector(envs, policy, steps_per_batch=4, pin_memory=True).collect()
    envs.close()
    assert pinned and all(pinned)
    assert all(leaf.is_pinned() for leaf in batch.values(True, True))
    assert (batch.to("cuda", non_blocking=True)[keys.NEXT_REWARD] == 1.0).all()

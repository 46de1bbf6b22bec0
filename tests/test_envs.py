"""Env construction from the config: ids, wrapper specs, frame skip and vectorization."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from rl_lightning.envs import FrameSkip, make_env, make_vec_env, resolve_wrappers


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v9", "CartPole-v99", "no_such_module:NoSuchEnv-v0"])
def test_unknown_env_id(env_id: str) -> None:
    with pytest.raises(ValueError, match=rf"Unknown environment id '{env_id}'.*registered"):
        make_env(env_id)


def test_wrapper_spec_as_import_path() -> None:
    env = make_env("CartPole-v1", wrappers=["gymnasium.wrappers.FlattenObservation"])
    assert isinstance(env, gym.wrappers.FlattenObservation)
    env.close()


def test_wrapper_specs_with_init_args_apply_innermost_first() -> None:
    env = make_env(
        "CartPole-v1",
        wrappers=[
            {"class_path": "gymnasium.wrappers.TimeLimit", "init_args": {"max_episode_steps": 3}},
            {"class_path": "gymnasium.wrappers.ClipReward", "init_args": {"max_reward": 0.5}},
        ],
    )
    assert isinstance(env, gym.wrappers.ClipReward)
    assert isinstance(env.env, gym.wrappers.TimeLimit)
    env.reset(seed=0)
    steps = [env.step(0) for _ in range(3)]
    assert [reward for _, reward, *_ in steps] == [0.5, 0.5, 0.5]
    assert [truncated for *_, truncated, _ in steps] == [False, False, True]
    env.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ClipReward", r"'ClipReward' is not an import path; expected e\.g\. 'gymnasium\.wrappers\.ClipReward'"),
        ("no_such_module.Wrapper", r"Cannot import wrapper 'no_such_module\.Wrapper'.*full import path"),
        ("gymnasium.wrappers.NoSuchWrapper", r"Cannot import wrapper 'gymnasium\.wrappers\.NoSuchWrapper'"),
        ("gymnasium.make", r"Wrapper 'gymnasium\.make' is .*, not a gymnasium\.Wrapper subclass"),
        ("gymnasium.spaces.Box", r"Wrapper 'gymnasium\.spaces\.Box' is .*, not a gymnasium\.Wrapper subclass"),
        (
            "gymnasium.wrappers.TimeLimit",
            r"init_args \{\} do not fit gymnasium\.wrappers\.TimeLimit.*max_episode_steps",
        ),
        (
            {"class_path": "gymnasium.wrappers.TimeLimit", "init_args": {"max_steps": 3}},
            r"init_args \{'max_steps': 3\} do not fit gymnasium\.wrappers\.TimeLimit",
        ),
        ({"class": "gymnasium.wrappers.TimeLimit"}, r"Wrapper spec .* is not understood; expected an import path"),
        (
            {"class_path": "gymnasium.wrappers.ClipReward", "args": {}},
            r"Wrapper spec .* is not understood",
        ),
    ],
)
def test_bad_wrapper_spec(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_wrappers([spec])
    with pytest.raises(ValueError, match=message):
        make_env("CartPole-v1", wrappers=[spec])


class CountingEnv(gym.Env):
    """Pays reward ``t`` at its ``t``-th step and ends at step ``end`` (terminated or truncated)."""

    observation_space = gym.spaces.Box(0.0, np.inf, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, end: int, truncate: bool) -> None:
        self.end, self.truncate, self.t = end, truncate, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        ended = self.t >= self.end
        obs = np.full(1, self.t, dtype=np.float32)
        return obs, float(self.t), ended and not self.truncate, ended and self.truncate, {"t": self.t}


@pytest.mark.parametrize("truncate", [False, True])
def test_frame_skip_sums_rewards_and_stops_at_the_end(truncate: bool) -> None:
    env = FrameSkip(CountingEnv(end=3, truncate=truncate), skip=2)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(0)
    assert (reward, terminated, truncated, info["t"], obs[0]) == (1.0 + 2.0, False, False, 2, 2.0)
    obs, reward, terminated, truncated, info = env.step(0)
    # The episode ended on the 3rd inner step: the 4th never ran.
    assert (reward, terminated, truncated, info["t"], obs[0]) == (3.0, not truncate, truncate, 3, 3.0)


def test_frame_skip_in_make_env() -> None:
    env = make_env("CartPole-v1", frame_skip=3)
    assert isinstance(env, FrameSkip) and env.skip == 3
    env.reset(seed=0)
    assert env.step(0)[1] == 3.0
    env.close()
    with pytest.raises(ValueError, match="FrameSkip needs skip >= 1, got 0"):
        FrameSkip(CountingEnv(end=3, truncate=False), skip=0)


@pytest.mark.parametrize(
    ("vectorization", "cls"), [("sync", gym.vector.SyncVectorEnv), ("async", gym.vector.AsyncVectorEnv)]
)
def test_make_vec_env_steps(vectorization: Any, cls: type) -> None:
    envs = make_vec_env("CartPole-v1", num_envs=2, vectorization=vectorization)
    try:
        assert isinstance(envs, cls)
        assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        first, _ = envs.reset(seed=0)
        obs, reward, terminated, truncated, _ = envs.step(np.array([0, 1]))
    finally:
        envs.close()
    assert first.shape == obs.shape == (2, 4)
    assert reward.tolist() == [1.0, 1.0]
    assert not terminated.any() and not truncated.any()
    # Envs i are seeded seed + i, as single envs would be.
    for i, action in enumerate([0, 1]):
        single = gym.make("CartPole-v1")
        assert np.array_equal(single.reset(seed=i)[0], first[i])
        assert np.array_equal(single.step(action)[0], obs[i])
        single.close()


def test_make_vec_env_rejects_unknown_vectorization() -> None:
    with pytest.raises(
        ValueError, match=r"vectorization='threads' is not supported; use one of 'sync', 'async', 'envpool'"
    ):
        make_vec_env("CartPole-v1", num_envs=2, vectorization="threads")  # type: ignore[arg-type]

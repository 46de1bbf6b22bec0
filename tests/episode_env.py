"""``EpisodeStep-v0``: an env whose observations name their episode and step, to check that data never joins two
episodes. Make it with ``RLDataModule("tests.episode_env:EpisodeStep-v0", vectorization="sync")``."""

from __future__ import annotations

import itertools
from typing import Any

import gymnasium as gym
import numpy as np

_episode_ids = itertools.count(1)


class EpisodeStepEnv(gym.Env):
    """Observation ``[episode id, step]`` (ids unique within the process); reward ``step`` after each step.

    Episodes last 3 to 9 steps (drawn at reset) and end terminated or truncated at random.
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.episode, self.t = next(_episode_ids), 0
        self.length = int(self.np_random.integers(3, 10))
        self.truncate = bool(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        ended = self.t >= self.length
        return self._obs(), float(self.t), ended and not self.truncate, ended and self.truncate, {}

    def _obs(self) -> np.ndarray:
        return np.array([self.episode, self.t], dtype=np.float32)


gym.register("EpisodeStep-v0", entry_point=EpisodeStepEnv)

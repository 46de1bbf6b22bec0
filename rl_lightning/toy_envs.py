"""Small envs whose answer is only visible in pixels or spread over the keys of a Dict observation.

They learn in seconds on a CPU, so tests (and users trying a CNN or Dict policy) can check that an algorithm reads
images and structured observations, not only that it runs. Importing the module registers them:
``RLDataModule("rl_lightning.toy_envs:PixelTarget-v0")`` does it for you.

Example:
    >>> env = gym.make("rl_lightning.toy_envs:PixelTarget-v0")
    >>> obs, _ = env.reset(seed=0)
    >>> obs.shape, obs.dtype, env.action_space
    ((36, 36, 1), dtype('uint8'), Discrete(4))
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class PixelTargetEnv(gym.Env):
    """A bright square in one of the image's four quadrants; the action that names the quadrant earns 1.

    Each step shows a new image, so nothing but the pixels tells the right action: a random policy earns
    ``episode_length / 4``, a policy that reads the image ``episode_length``. Observations are ``[size, size, 1]``
    uint8 (height, width, channel), with noise in the background; 36 is the smallest size the Nature DQN CNN takes.

    Args:
        size: height and width of the image.
        episode_length: steps per episode (episodes end truncated).
        continuous: a ``Box(-1, 1, (2,))`` action instead of ``Discrete(4)``: the reward is ``1 - distance / 2``
            between the action and the target's centre in ``[-1, 1]^2`` coordinates (SAC, TD3, DDPG).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self, size: int = 36, episode_length: int = 8, continuous: bool = False, render_mode: str | None = None
    ) -> None:
        if size < 8 or size % 2:
            raise ValueError(f"size={size} is invalid: expected an even size >= 8, e.g. 36.")
        self.size, self.episode_length, self.continuous, self.render_mode = (
            size,
            episode_length,
            continuous,
            render_mode,
        )
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 1), np.uint8)
        self.action_space: gym.Space = (
            gym.spaces.Box(-1.0, 1.0, (2,), np.float32) if continuous else gym.spaces.Discrete(4)
        )

    def _draw(self) -> np.ndarray:
        self.target = int(self.np_random.integers(4))
        half = self.size // 2
        image = self.np_random.integers(0, 64, (self.size, self.size, 1), dtype=np.uint8)
        row, col = divmod(self.target, 2)
        side = half // 2
        top, left = row * half + side // 2, col * half + side // 2
        image[top : top + side, left : left + side] = 255
        self.image = image
        return image

    def _centre(self) -> np.ndarray:
        row, col = divmod(self.target, 2)
        return np.array([col - 0.5, row - 0.5], dtype=np.float32)  # quadrant centres at +-0.5

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.continuous:
            distance = float(np.linalg.norm(np.asarray(action, dtype=np.float32) - self._centre()))
            reward = 1.0 - distance / 2.0
        else:
            reward = float(int(action) == self.target)
        self.t += 1
        return self._draw(), reward, False, self.t >= self.episode_length, {}

    def render(self) -> np.ndarray:
        return np.repeat(self.image, 3, axis=-1)


class DictTargetEnv(gym.Env):
    """A Dict observation whose keys only together tell the right action among ``Discrete(4)``.

    ``{"goal": Discrete(4), "sensors": {"flip": Box(-1, 1, (3,))}}``: the right action is ``goal`` when ``flip[0]
    > 0``, else ``3 - goal``; it earns 1. The other two sensor values are noise. Each step draws a new observation,
    so a random policy earns ``episode_length / 4`` and one that reads both keys ``episode_length``.
    """

    def __init__(self, episode_length: int = 8) -> None:
        self.episode_length = episode_length
        self.observation_space = gym.spaces.Dict(
            {
                "goal": gym.spaces.Discrete(4),
                "sensors": gym.spaces.Dict({"flip": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)}),
            }
        )
        self.action_space = gym.spaces.Discrete(4)

    def _draw(self) -> dict[str, Any]:
        self.goal = int(self.np_random.integers(4))
        flip = self.np_random.uniform(-1.0, 1.0, 3).astype(np.float32)
        self.answer = self.goal if flip[0] > 0 else 3 - self.goal
        return {"goal": self.goal, "sensors": {"flip": flip}}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        reward = float(int(action) == self.answer)
        self.t += 1
        return self._draw(), reward, False, self.t >= self.episode_length, {}


gym.register("PixelTarget-v0", entry_point=f"{__name__}:PixelTargetEnv")
gym.register("PixelTargetContinuous-v0", entry_point=f"{__name__}:PixelTargetEnv", kwargs={"continuous": True})
gym.register("DictTarget-v0", entry_point=f"{__name__}:DictTargetEnv")

"""A wrapper that breaks an env on purpose, for the fault tests (importable by async env subprocesses)."""

from __future__ import annotations

import os
from typing import Any, SupportsFloat

import gymnasium as gym


class RaiseAfter(gym.Wrapper):
    """The env first reset with ``seed == env_index`` (env ``env_index`` of a vector env seeded from 0) raises
    ``ValueError`` at its ``steps``-th step, or with ``exit_process`` ends its process there; with
    ``env_index=None`` every env does, however it was seeded."""

    def __init__(self, env: gym.Env, steps: int, env_index: int | None, exit_process: bool = False) -> None:
        super().__init__(env)
        self.steps, self.target, self.exit_process = steps, env_index, exit_process
        self.index: int | None = None
        self.count = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self.index is None and seed is not None:
            self.index = seed
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        self.count += 1
        if (self.target is None or self.index == self.target) and self.count >= self.steps:
            if self.exit_process:
                os._exit(3)  # the process dies, as a crashing simulator would take it down
            raise ValueError("the simulator exploded")
        return self.env.step(action)

"""Steps vector envs with a policy and returns one TensorDict per batch (the data contract of ``keys``).

The hot path writes into tensors preallocated once per batch (through numpy views, the cheapest way to
copy env output) and calls the policy once per step for all envs. No TensorDict is built per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_lightning import keys

Policy = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]
"""Maps a batch of observations ``[num_envs, *obs_shape]`` to at least ``{"action": ...}``; every entry it
returns is stored in the batch under its key (e.g. ``action_log_prob``)."""


class _ActionAdapter:
    """Turns policy actions into what the vector env takes (numpy, clipped to a ``Box``'s bounds)."""

    def __init__(self, single_action_space: gym.Space) -> None:
        self.bounds = None
        if isinstance(single_action_space, gym.spaces.Box):
            self.bounds = (single_action_space.low, single_action_space.high)

    def __call__(self, action: torch.Tensor) -> np.ndarray:
        array = action.cpu().numpy()
        if self.bounds is not None:
            array = np.clip(array, *self.bounds)
        return array


class Collector:
    """Collects batches of ``[num_envs, steps_per_batch]`` transitions.

    Args:
        envs: a gymnasium vector env made with ``AutoresetMode.SAME_STEP`` (see ``make_vec_env``).
        policy: see :data:`Policy`; called under ``torch.inference_mode()``.
        steps_per_batch: vector steps per batch (T).

    Example:
        >>> from rl_lightning.envs import make_vec_env
        >>> envs = make_vec_env("CartPole-v1", num_envs=2, seed=0)
        >>> policy = lambda obs: {"action": torch.zeros(len(obs), dtype=torch.int64)}
        >>> batch = Collector(envs, policy, steps_per_batch=8).collect()
        >>> batch.batch_size
        torch.Size([2, 8])
    """

    def __init__(self, envs: gym.vector.VectorEnv, policy: Policy, steps_per_batch: int) -> None:
        if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError("Collector needs a vector env with autoreset_mode=AutoresetMode.SAME_STEP.")
        self.envs = envs
        self.policy = policy
        self.steps_per_batch = steps_per_batch
        self.num_envs = envs.num_envs
        self._to_env = _ActionAdapter(envs.single_action_space)
        obs_space = envs.single_observation_space
        self._obs_shape = tuple(obs_space.shape or ())
        self._obs_dtype = torch.from_numpy(np.zeros((), dtype=obs_space.dtype)).dtype
        self._obs: np.ndarray | None = None
        self._episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, seed: int | None = None) -> None:
        """Resets every env (seeding them ``seed, seed + 1, ...``) and the running episode statistics."""
        self._obs, _ = self.envs.reset(seed=seed)
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0

    @torch.inference_mode()
    def collect(self) -> TensorDict:
        """Steps the envs ``steps_per_batch`` times and returns the batch, ``batch_size=[num_envs, T]``."""
        if self._obs is None:
            self.reset()
        n, steps = self.num_envs, self.steps_per_batch
        obs = torch.empty((n, steps, *self._obs_shape), dtype=self._obs_dtype)
        next_obs = torch.empty_like(obs)
        reward = torch.empty((n, steps, 1), dtype=torch.float32)
        terminated = torch.empty((n, steps, 1), dtype=torch.bool)
        truncated = torch.empty((n, steps, 1), dtype=torch.bool)
        episode_return = torch.zeros((n, steps, 1), dtype=torch.float32)
        episode_length = torch.zeros((n, steps, 1), dtype=torch.int64)
        obs_np, next_obs_np = obs.numpy(), next_obs.numpy()
        reward_np, term_np, trunc_np = reward.numpy(), terminated.numpy(), truncated.numpy()
        outputs: dict[str, torch.Tensor] = {}

        current = self._obs
        for t in range(steps):
            obs_np[:, t] = current
            out = self.policy(obs[:, t])
            if not outputs:
                outputs = {k: torch.empty((n, steps, *v.shape[1:]), dtype=v.dtype) for k, v in out.items()}
            for key, value in out.items():
                outputs[key][:, t] = value
            current, rew, term, trunc, info = self.envs.step(self._to_env(out[keys.ACTION]))
            next_obs_np[:, t] = current
            reward_np[:, t, 0] = rew
            term_np[:, t, 0] = term
            trunc_np[:, t, 0] = trunc
            self._episode_return += rew
            self._episode_length += 1
            done = term | trunc
            if done.any():
                for i in np.flatnonzero(done):
                    next_obs_np[i, t] = info["final_obs"][i]
                    episode_return[i, t, 0] = self._episode_return[i]
                    episode_length[i, t, 0] = self._episode_length[i]
                self._episode_return[done] = 0.0
                self._episode_length[done] = 0
        self._obs = current

        done_flags = terminated | truncated
        not_done = torch.zeros_like(done_flags)
        return TensorDict(
            {
                keys.OBSERVATION: obs,
                **outputs,
                keys.DONE: not_done,
                keys.TERMINATED: not_done,
                keys.TRUNCATED: not_done,
                keys.NEXT: {
                    keys.OBSERVATION: next_obs,
                    keys.REWARD: reward,
                    keys.DONE: done_flags,
                    keys.TERMINATED: terminated,
                    keys.TRUNCATED: truncated,
                    keys.EPISODE_RETURN: episode_return,
                    keys.EPISODE_LENGTH: episode_length,
                },
            },
            batch_size=[n, steps],
        )


@torch.inference_mode()
def evaluate(envs: gym.vector.VectorEnv, policy: Policy, num_episodes: int, seed: int | None = None) -> TensorDict:
    """Runs ``num_episodes`` whole episodes spread over the envs and returns their returns and lengths.

    Every env runs a fixed quota of episodes (not "the first ones to finish", which would favour short
    episodes). Returns a TensorDict of ``episode_return`` and ``episode_length``, ``batch_size=[num_episodes]``.
    """
    n = envs.num_envs
    quota = np.array([(num_episodes + n - 1 - i) // n for i in range(n)])
    to_env = _ActionAdapter(envs.single_action_space)
    current, _ = envs.reset(seed=seed)
    running_return = np.zeros(n)
    running_length = np.zeros(n, dtype=np.int64)
    finished = np.zeros(n, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    while (finished < quota).any():
        action = policy(torch.from_numpy(np.asarray(current)))[keys.ACTION]
        current, rew, term, trunc, _ = envs.step(to_env(action))
        running_return += rew
        running_length += 1
        for i in np.flatnonzero(term | trunc):
            if finished[i] < quota[i]:
                returns.append(float(running_return[i]))
                lengths.append(int(running_length[i]))
                finished[i] += 1
            running_return[i] = 0.0
            running_length[i] = 0
    return TensorDict(
        {
            keys.EPISODE_RETURN: torch.tensor(returns, dtype=torch.float32),
            keys.EPISODE_LENGTH: torch.tensor(lengths, dtype=torch.int64),
        },
        batch_size=[num_episodes],
    )

"""What the stable-baselines3 side of ``ppo_cartpole.py``, ``sac_pendulum.py`` and ``vs_sb3.py`` shares: the timed
``learn``, the evaluation callback that mirrors Lightning's validation schedule (and seeds its evaluation envs as
RLDataModule does), and rl_lightning's initialization applied to SB3's MLPs.

stable-baselines3 is the ``bench`` extra: ``.venv/bin/pip install -c constraints.txt -e '.[bench]'``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

try:
    import stable_baselines3 as sb3
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.noise import NormalActionNoise
    from stable_baselines3.common.preprocessing import is_image_space_channels_first
    from stable_baselines3.common.torch_layers import NatureCNN
    from stable_baselines3.common.vec_env import VecEnv
except ImportError as err:
    raise SystemExit(
        f"The benchmarks compare against stable-baselines3, which is not installed ({err}). Install the bench "
        "extra: .venv/bin/pip install -c constraints.txt -e '.[bench]'"
    ) from err

from rl_lightning.data import evaluation_seed
from rl_lightning.envs import make_env

__all__ = [
    "DEVICE",
    "Evaluation",
    "NatureCNN",
    "NormalActionNoise",
    "is_image_space_channels_first",
    "learn",
    "make_envs",
    "mlp_init_",
    "sb3",
]

DEVICE = "cpu"  # the configs' accelerator


def make_envs(hp: dict[str, Any], num_envs: int, seed: int | None = None, train: bool = True) -> VecEnv:
    """SB3's ``make_vec_env`` (a ``DummyVecEnv`` of ``Monitor``-wrapped envs) of the env rl_lightning's
    ``RLDataModule`` makes from the same settings: :func:`rl_lightning.envs.make_env` with the config's ``env_id``,
    ``env_kwargs``, ``frame_skip``, ``wrappers`` and, for training envs (``train``), ``train_wrappers``; without any
    of them, ``gym.make(env_id)`` as SB3's users make envs. ``seed`` resets env ``i`` with ``seed + i`` at the
    first reset, as rl_lightning's training envs. ``Monitor`` wraps the whole env, training wrappers included."""
    make = functools.partial(
        make_env,
        hp["env_id"],
        hp.get("wrappers"),
        hp.get("frame_skip", 1),
        env_kwargs=hp.get("env_kwargs"),
        train_wrappers=hp.get("train_wrappers") if train else None,
    )
    return make_vec_env(make, num_envs, seed=seed)


def mlp_init_(*networks: nn.Sequential) -> None:
    """rl_lightning's initialization of an MLP with an output layer (``networks.mlp``) applied to SB3's: orthogonal
    weights with gain sqrt(2) for the hidden layers and 1 for the output layer, zero biases."""
    for network in networks:
        linears = [layer for layer in network if isinstance(layer, nn.Linear)]
        for k, layer in enumerate(linears):
            nn.init.orthogonal_(layer.weight, 1.0 if k == len(linears) - 1 else math.sqrt(2))
            nn.init.zeros_(layer.bias)


class Evaluation(BaseCallback):
    """Deterministic evaluation where Lightning validates: after the update of every ``every``-th batch of
    ``frames_per_batch`` frames, and after the last batch; training stops at the first mean return above
    ``threshold`` (as ``EarlyStopping(mode="max")``, which compares with ``>``).

    SB3's ``EvalCallback`` evaluates from ``on_step``, i.e. after a batch is collected but before it is
    trained on; this one evaluates at the start of the next rollout, which comes after the update. Each round
    seeds the evaluation envs as ``RLDataModule`` seeds its rounds (``evaluation_seed(seed, 0, round)``, env
    ``i`` ``+ i``), so all sides evaluate from the same initial states. A stop takes effect at the next
    ``on_step``, after one more step of the training envs (``num_envs`` frames, not counted in ``frames``).

    Attributes:
        eval_return: the last evaluation's mean return (``None`` before the first).
        frames: the training frames at the last evaluation.
    """

    def __init__(
        self, eval_envs: VecEnv, episodes: int, frames_per_batch: int, every: int, seed: int, threshold: float
    ) -> None:
        super().__init__()
        self.eval_envs, self.episodes, self.threshold = eval_envs, episodes, threshold
        self.frames_per_batch, self.every, self.seed = frames_per_batch, every, seed
        self.rounds, self.frames, self.reached = 0, 0, False
        self.eval_return: float | None = None

    def _on_rollout_start(self) -> None:
        batches = self.model.num_timesteps // self.frames_per_batch
        if batches > 0 and batches % self.every == 0:
            self._evaluate()

    def _on_step(self) -> bool:
        return not self.reached

    def _on_training_end(self) -> None:
        if not self.reached:  # the budget is spent: the last batch's evaluation
            self._evaluate()

    def _evaluate(self) -> None:
        self.rounds += 1
        self.eval_envs.seed(evaluation_seed(self.seed, 0, self.rounds))  # used by evaluate_policy's reset
        returns, _ = evaluate_policy(
            self.model, self.eval_envs, self.episodes, deterministic=True, return_episode_rewards=True
        )
        self.eval_return = float(np.mean(returns))
        self.frames = self.model.num_timesteps
        self.reached = self.eval_return > self.threshold


def learn(
    hp: dict[str, Any],
    seed: int,
    total_frames: int,
    build: Callable[[VecEnv], BaseAlgorithm],
    threshold: float | None,
) -> tuple[BaseAlgorithm, int, float, float | None]:
    """Makes the training envs, builds the model with ``build(envs)`` and runs ``learn``, timed from making the envs
    to the end of ``learn`` (SB3's constructors build the networks together with the optimizers, so building them
    is timed too); with a ``threshold``, evaluated and stopped by :class:`Evaluation` on the other sides' schedule.

    Returns:
        ``(model, frames, seconds, last evaluation return or None)``.
    """
    start = time.perf_counter()
    envs = make_envs(hp, hp["num_envs"], seed=seed)
    model = build(envs)
    evaluator = None
    if threshold is not None:
        eval_envs = make_envs(hp, min(hp["eval_envs"], hp["eval_episodes"]), train=False)
        evaluator = Evaluation(
            eval_envs, hp["eval_episodes"], hp["frames_per_batch"], hp["val_check_interval"], seed, threshold
        )
    model.learn(total_frames, callback=evaluator)
    envs.close()
    frames, eval_return = model.num_timesteps, None
    if evaluator is not None:
        evaluator.eval_envs.close()
        frames, eval_return = evaluator.frames, evaluator.eval_return
    return model, frames, time.perf_counter() - start, eval_return

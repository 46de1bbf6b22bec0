"""What torchrl collector workers build in tests (``create_env_fn``, ``policy_factory``): module-level functions in a
module that imports only torch and torchrl, so that each spawned worker starts quickly."""

from __future__ import annotations

import pytest

pytest.importorskip("torchrl", reason="torchrl is not importable here: its tests run in .venv-torchrl")

from tensordict.nn import TensorDictModule
from torch import nn
from torch.distributions import Categorical
from torchrl.envs import GymEnv
from torchrl.modules import ProbabilisticActor


def cartpole() -> GymEnv:
    """torchrl's CartPole with index actions, as gymnasium (and rl_lightning's evaluation) takes them."""
    return GymEnv("CartPole-v1", categorical_action_encoding=True)


def cartpole_actor(hidden: int = 16) -> ProbabilisticActor:
    """The actor of ``tests.test_torchrl.ppo_parts`` (the same modules, so their weights map onto each other)."""
    net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=Categorical,
        return_log_prob=True,
    )

"""The algorithms, one LightningModule per file."""

from rl_lightning.algorithms.a2c import A2C
from rl_lightning.algorithms.dqn import DQN
from rl_lightning.algorithms.ppo import PPO
from rl_lightning.algorithms.sac import SAC
from rl_lightning.algorithms.td3 import DDPG, TD3

__all__ = ["A2C", "DDPG", "DQN", "PPO", "SAC", "TD3"]

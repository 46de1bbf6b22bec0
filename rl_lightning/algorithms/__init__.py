"""The algorithms, one LightningModule per file."""

from rl_lightning.algorithms.a2c import A2C
from rl_lightning.algorithms.ppo import PPO
from rl_lightning.algorithms.sac import SAC

__all__ = ["A2C", "PPO", "SAC"]

"""The algorithms, one LightningModule per file."""

from rl_lightning.algorithms.ppo import PPO

__all__ = ["PPO"]

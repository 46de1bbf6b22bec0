"""The algorithms, one LightningModule per file.

The names are imported on first use (PEP 562): ``from rl_lightning.algorithms import PPO`` loads PPO, not SAC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rl_lightning import _lazy_exports

if TYPE_CHECKING:
    from rl_lightning.algorithms.a2c import A2C
    from rl_lightning.algorithms.dqn import DQN
    from rl_lightning.algorithms.off_policy import OffPolicyModule
    from rl_lightning.algorithms.on_policy import OnPolicyModule
    from rl_lightning.algorithms.ppo import PPO
    from rl_lightning.algorithms.sac import SAC
    from rl_lightning.algorithms.td3 import DDPG, TD3

__all__ = ["A2C", "DDPG", "DQN", "PPO", "SAC", "TD3", "OffPolicyModule", "OnPolicyModule"]

_EXPORTS = {
    "A2C": "rl_lightning.algorithms.a2c",
    "DDPG": "rl_lightning.algorithms.td3",
    "DQN": "rl_lightning.algorithms.dqn",
    "PPO": "rl_lightning.algorithms.ppo",
    "SAC": "rl_lightning.algorithms.sac",
    "TD3": "rl_lightning.algorithms.td3",
    "OffPolicyModule": "rl_lightning.algorithms.off_policy",
    "OnPolicyModule": "rl_lightning.algorithms.on_policy",
}
"""Each name's module (what the imports above declare for type checkers)."""

if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name of this package
    __getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, __all__)

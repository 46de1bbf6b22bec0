"""The algorithms, one LightningModule per file.

The names are imported on first use (PEP 562): ``from rl_lightning.algorithms import PPO`` loads PPO, not SAC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

    def __getattr__(name: str) -> Any:
        if name not in _EXPORTS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = globals()[name] = getattr(importlib.import_module(_EXPORTS[name]), name)
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})

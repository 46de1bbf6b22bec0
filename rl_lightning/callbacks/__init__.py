"""Callbacks of the RL loop."""

from rl_lightning.callbacks.function_hook import FunctionHook
from rl_lightning.callbacks.rl_callback import RL_HOOKS, RLCallback

__all__ = ["RL_HOOKS", "FunctionHook", "RLCallback"]

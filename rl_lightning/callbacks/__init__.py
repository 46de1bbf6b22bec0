"""Callbacks of the RL loop."""

from rl_lightning.callbacks.function_hook import FunctionHook
from rl_lightning.callbacks.replay_buffer_trainer import ReplayBufferTrainer
from rl_lightning.callbacks.rl_callback import RL_HOOKS, RLCallback
from rl_lightning.callbacks.target_net_updater import TargetNetUpdaterHook
from rl_lightning.callbacks.utdr import UTDRHook

__all__ = ["RL_HOOKS", "FunctionHook", "RLCallback", "ReplayBufferTrainer", "TargetNetUpdaterHook", "UTDRHook"]

"""rl_lightning: reinforcement learning on PyTorch Lightning.

The names are imported on first use (PEP 562): ``import rl_lightning.module`` or ``from rl_lightning import PPO``
loads what those need, not every algorithm and callback (nor video recording).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rl_lightning import keys
    from rl_lightning.algorithms.a2c import A2C
    from rl_lightning.algorithms.dqn import DQN
    from rl_lightning.algorithms.ppo import PPO
    from rl_lightning.algorithms.sac import SAC
    from rl_lightning.algorithms.td3 import DDPG, TD3
    from rl_lightning.builders import TRAINER_DEFAULTS, make_trainer
    from rl_lightning.callbacks.batch_sub_sampler import BatchSubSampler
    from rl_lightning.callbacks.clear_cuda_cache import ClearCudaCache
    from rl_lightning.callbacks.count_frames_log import CountFramesLog
    from rl_lightning.callbacks.episode_writer import EpisodeWriter
    from rl_lightning.callbacks.frame_early_stopping import FrameEarlyStopping
    from rl_lightning.callbacks.function_hook import FunctionHook
    from rl_lightning.callbacks.log_scalar import LogScalar
    from rl_lightning.callbacks.log_timing import LogTiming
    from rl_lightning.callbacks.log_validation_reward import LogValidationReward
    from rl_lightning.callbacks.lr_scheduler_hook import LRSchedulerHook
    from rl_lightning.callbacks.optimizer_hook import OptimizerHook
    from rl_lightning.callbacks.replay_buffer_trainer import ReplayBufferTrainer
    from rl_lightning.callbacks.reward_normalizer import RewardNormalizer
    from rl_lightning.callbacks.rl_callback import RLCallback
    from rl_lightning.callbacks.rollout_recorder import RolloutRecorder
    from rl_lightning.callbacks.select_keys import SelectKeys
    from rl_lightning.callbacks.target_net_updater import TargetNetUpdaterHook
    from rl_lightning.callbacks.update_weights import UpdateWeights
    from rl_lightning.callbacks.utdr import UTDRHook
    from rl_lightning.cli import build
    from rl_lightning.collector import Collector, evaluate
    from rl_lightning.data import RLDataModule
    from rl_lightning.envs import FrameSkip, make_env, make_vec_env
    from rl_lightning.loop import RL_HOOKS, RLLoop
    from rl_lightning.module import RLModule
    from rl_lightning.offline import OfflineDataModule, generate_dataset
    from rl_lightning.replay import ReplayBuffer

__version__ = "0.1.0"

__all__ = [
    "A2C",
    "DDPG",
    "DQN",
    "PPO",
    "RL_HOOKS",
    "SAC",
    "TD3",
    "TRAINER_DEFAULTS",
    "BatchSubSampler",
    "ClearCudaCache",
    "Collector",
    "CountFramesLog",
    "EpisodeWriter",
    "FrameEarlyStopping",
    "FrameSkip",
    "FunctionHook",
    "LRSchedulerHook",
    "LogScalar",
    "LogTiming",
    "LogValidationReward",
    "OfflineDataModule",
    "OptimizerHook",
    "RLCallback",
    "RLDataModule",
    "RLLoop",
    "RLModule",
    "ReplayBuffer",
    "ReplayBufferTrainer",
    "RewardNormalizer",
    "RolloutRecorder",
    "SelectKeys",
    "TargetNetUpdaterHook",
    "UTDRHook",
    "UpdateWeights",
    "build",
    "evaluate",
    "generate_dataset",
    "keys",
    "make_env",
    "make_trainer",
    "make_vec_env",
]

_EXPORTS = {
    "A2C": "rl_lightning.algorithms.a2c",
    "DDPG": "rl_lightning.algorithms.td3",
    "DQN": "rl_lightning.algorithms.dqn",
    "PPO": "rl_lightning.algorithms.ppo",
    "RL_HOOKS": "rl_lightning.loop",
    "SAC": "rl_lightning.algorithms.sac",
    "TD3": "rl_lightning.algorithms.td3",
    "TRAINER_DEFAULTS": "rl_lightning.builders",
    "BatchSubSampler": "rl_lightning.callbacks.batch_sub_sampler",
    "ClearCudaCache": "rl_lightning.callbacks.clear_cuda_cache",
    "Collector": "rl_lightning.collector",
    "CountFramesLog": "rl_lightning.callbacks.count_frames_log",
    "EpisodeWriter": "rl_lightning.callbacks.episode_writer",
    "FrameEarlyStopping": "rl_lightning.callbacks.frame_early_stopping",
    "FrameSkip": "rl_lightning.envs",
    "FunctionHook": "rl_lightning.callbacks.function_hook",
    "LRSchedulerHook": "rl_lightning.callbacks.lr_scheduler_hook",
    "LogScalar": "rl_lightning.callbacks.log_scalar",
    "LogTiming": "rl_lightning.callbacks.log_timing",
    "LogValidationReward": "rl_lightning.callbacks.log_validation_reward",
    "OfflineDataModule": "rl_lightning.offline",
    "OptimizerHook": "rl_lightning.callbacks.optimizer_hook",
    "RLCallback": "rl_lightning.callbacks.rl_callback",
    "RLDataModule": "rl_lightning.data",
    "RLLoop": "rl_lightning.loop",
    "RLModule": "rl_lightning.module",
    "ReplayBuffer": "rl_lightning.replay",
    "ReplayBufferTrainer": "rl_lightning.callbacks.replay_buffer_trainer",
    "RewardNormalizer": "rl_lightning.callbacks.reward_normalizer",
    "RolloutRecorder": "rl_lightning.callbacks.rollout_recorder",
    "SelectKeys": "rl_lightning.callbacks.select_keys",
    "TargetNetUpdaterHook": "rl_lightning.callbacks.target_net_updater",
    "UTDRHook": "rl_lightning.callbacks.utdr",
    "UpdateWeights": "rl_lightning.callbacks.update_weights",
    "build": "rl_lightning.cli",
    "evaluate": "rl_lightning.collector",
    "generate_dataset": "rl_lightning.offline",
    "keys": "rl_lightning.keys",  # a module: importing it sets it as this package's attribute
    "make_env": "rl_lightning.envs",
    "make_trainer": "rl_lightning.builders",
    "make_vec_env": "rl_lightning.envs",
}
"""Each name's module (what the imports above declare for type checkers)."""


def _lazy_exports(
    package: str, exports: Mapping[str, str], names: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each name to the module defining it (a
    submodule of the package stands for itself), ``names`` is the package's ``__all__``.

    Used by this package, ``rl_lightning.callbacks`` and ``rl_lightning.algorithms``. It lives here, not in a module
    of its own, because every module of the package imports this ``__init__``: anything it imported would import it
    back."""
    namespace = sys.modules[package].__dict__
    listed = sorted(names)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name])
        value = namespace[name] = module if module.__name__ == f"{package}.{name}" else getattr(module, name)
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *listed})

    return __getattr__, __dir__


if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name of this package
    __getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, __all__)

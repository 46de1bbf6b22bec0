"""rl_lightning: reinforcement learning on PyTorch Lightning."""

from rl_lightning import keys
from rl_lightning.algorithms import A2C, DDPG, DQN, PPO, SAC, TD3
from rl_lightning.builders import TRAINER_DEFAULTS, build, make_trainer
from rl_lightning.callbacks import (
    RL_HOOKS,
    BatchSubSampler,
    ClearCudaCache,
    CountFramesLog,
    FrameEarlyStopping,
    FunctionHook,
    LogScalar,
    LogTiming,
    LogValidationReward,
    LRSchedulerHook,
    OptimizerHook,
    ReplayBufferTrainer,
    RewardNormalizer,
    RLCallback,
    RolloutRecorder,
    SelectKeys,
    TargetNetUpdaterHook,
    UTDRHook,
)
from rl_lightning.collector import Collector, evaluate
from rl_lightning.data import RLDataModule
from rl_lightning.envs import FrameSkip, make_env, make_vec_env
from rl_lightning.loop import RLLoop
from rl_lightning.module import RLModule
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
    "FrameEarlyStopping",
    "FrameSkip",
    "FunctionHook",
    "LRSchedulerHook",
    "LogScalar",
    "LogTiming",
    "LogValidationReward",
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
    "build",
    "evaluate",
    "keys",
    "make_env",
    "make_trainer",
    "make_vec_env",
]

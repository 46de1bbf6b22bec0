"""Callbacks of the RL loop."""

from rl_lightning.callbacks.batch_sub_sampler import BatchSubSampler
from rl_lightning.callbacks.clear_cuda_cache import ClearCudaCache
from rl_lightning.callbacks.count_frames_log import CountFramesLog
from rl_lightning.callbacks.frame_early_stopping import FrameEarlyStopping
from rl_lightning.callbacks.function_hook import FunctionHook
from rl_lightning.callbacks.graceful_interrupt import GracefulInterrupt
from rl_lightning.callbacks.log_scalar import LogScalar
from rl_lightning.callbacks.log_timing import LogTiming
from rl_lightning.callbacks.log_validation_reward import LogValidationReward
from rl_lightning.callbacks.lr_scheduler_hook import LRSchedulerHook
from rl_lightning.callbacks.optimizer_hook import OptimizerHook
from rl_lightning.callbacks.replay_buffer_trainer import ReplayBufferTrainer
from rl_lightning.callbacks.reward_normalizer import RewardNormalizer
from rl_lightning.callbacks.rl_callback import RL_HOOKS, RLCallback
from rl_lightning.callbacks.rollout_recorder import RolloutRecorder
from rl_lightning.callbacks.select_keys import SelectKeys
from rl_lightning.callbacks.target_net_updater import TargetNetUpdaterHook
from rl_lightning.callbacks.utdr import UTDRHook

__all__ = [
    "RL_HOOKS",
    "BatchSubSampler",
    "ClearCudaCache",
    "CountFramesLog",
    "FrameEarlyStopping",
    "FunctionHook",
    "GracefulInterrupt",
    "LRSchedulerHook",
    "LogScalar",
    "LogTiming",
    "LogValidationReward",
    "OptimizerHook",
    "RLCallback",
    "ReplayBufferTrainer",
    "RewardNormalizer",
    "RolloutRecorder",
    "SelectKeys",
    "TargetNetUpdaterHook",
    "UTDRHook",
]

"""Callbacks of the RL loop.

The names are imported on first use (PEP 562): ``from rl_lightning.callbacks import LogScalar`` loads LogScalar's
module, not every callback's (``RolloutRecorder`` and ``LogValidationReward`` bring video recording).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rl_lightning import _lazy_exports

if TYPE_CHECKING:
    from rl_lightning.callbacks.batch_sub_sampler import BatchSubSampler
    from rl_lightning.callbacks.clear_cuda_cache import ClearCudaCache
    from rl_lightning.callbacks.count_frames_log import CountFramesLog
    from rl_lightning.callbacks.episode_writer import EpisodeWriter
    from rl_lightning.callbacks.frame_early_stopping import FrameEarlyStopping
    from rl_lightning.callbacks.function_hook import FunctionHook
    from rl_lightning.callbacks.graceful_interrupt import GracefulInterrupt
    from rl_lightning.callbacks.log_scalar import LogScalar
    from rl_lightning.callbacks.log_timing import LogTiming
    from rl_lightning.callbacks.log_validation_reward import LogValidationReward
    from rl_lightning.callbacks.lost_rank_report import LostRankReport
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
    from rl_lightning.loop import RL_HOOKS

__all__ = [
    "RL_HOOKS",
    "BatchSubSampler",
    "ClearCudaCache",
    "CountFramesLog",
    "EpisodeWriter",
    "FrameEarlyStopping",
    "FunctionHook",
    "GracefulInterrupt",
    "LRSchedulerHook",
    "LogScalar",
    "LogTiming",
    "LogValidationReward",
    "LostRankReport",
    "OptimizerHook",
    "RLCallback",
    "ReplayBufferTrainer",
    "RewardNormalizer",
    "RolloutRecorder",
    "SelectKeys",
    "TargetNetUpdaterHook",
    "UTDRHook",
    "UpdateWeights",
]

_EXPORTS = {
    "RL_HOOKS": "rl_lightning.loop",
    "BatchSubSampler": "rl_lightning.callbacks.batch_sub_sampler",
    "ClearCudaCache": "rl_lightning.callbacks.clear_cuda_cache",
    "CountFramesLog": "rl_lightning.callbacks.count_frames_log",
    "EpisodeWriter": "rl_lightning.callbacks.episode_writer",
    "FrameEarlyStopping": "rl_lightning.callbacks.frame_early_stopping",
    "FunctionHook": "rl_lightning.callbacks.function_hook",
    "GracefulInterrupt": "rl_lightning.callbacks.graceful_interrupt",
    "LRSchedulerHook": "rl_lightning.callbacks.lr_scheduler_hook",
    "LostRankReport": "rl_lightning.callbacks.lost_rank_report",
    "LogScalar": "rl_lightning.callbacks.log_scalar",
    "LogTiming": "rl_lightning.callbacks.log_timing",
    "LogValidationReward": "rl_lightning.callbacks.log_validation_reward",
    "OptimizerHook": "rl_lightning.callbacks.optimizer_hook",
    "RLCallback": "rl_lightning.callbacks.rl_callback",
    "ReplayBufferTrainer": "rl_lightning.callbacks.replay_buffer_trainer",
    "RewardNormalizer": "rl_lightning.callbacks.reward_normalizer",
    "RolloutRecorder": "rl_lightning.callbacks.rollout_recorder",
    "SelectKeys": "rl_lightning.callbacks.select_keys",
    "TargetNetUpdaterHook": "rl_lightning.callbacks.target_net_updater",
    "UTDRHook": "rl_lightning.callbacks.utdr",
    "UpdateWeights": "rl_lightning.callbacks.update_weights",
}
"""Each name's module (what the imports above declare for type checkers)."""

if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name of this package
    __getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, __all__)

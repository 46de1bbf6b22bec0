"""``UTDRHook``: logs the update-to-data ratio."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class UTDRHook(RLCallback):
    """Logs ``train/utd_ratio``: optimizer updates per frame collected (by each rank) since learning started.

    Under DDP every update is one synchronized step of all ranks, each training on its own replay sample, so
    the ratio counts the frames of one rank (what SAC's ``utd_ratio`` sets).

    Learning starts with the first batch that has optimizer steps (off-policy algorithms collect
    ``init_random_frames`` first).
    """

    def __init__(self) -> None:
        self.start_frames: int | None = None

    @override
    def on_post_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> dict[str, Any] | None:
        if self.start_frames is None:
            if module.updates == 0:
                return None
            self.start_frames = module.frames - module.data.global_frames_per_batch
        frames_per_rank = (module.frames - self.start_frames) / trainer.world_size
        return {"train/utd_ratio": module.updates / frames_per_rank}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"start_frames": self.start_frames}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start_frames = state_dict["start_frames"]

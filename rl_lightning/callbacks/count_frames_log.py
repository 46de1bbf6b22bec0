"""``CountFramesLog``: logs the number of env frames collected, torchrl's ``n_frames``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class CountFramesLog(RLCallback):
    """Logs ``n_frames``: the env frames collected so far over all ranks (``module.frames``, frame skip
    included), at ``on_pre_steps_log``, under torchrl's name.

    rl_lightning already logs the same count as ``frames`` (and uses it as the ``step`` of every curve); this
    callback keeps torchrl dashboards and scripts that read ``n_frames`` working, and can put the count on
    the progress bar.

    Args:
        log_pbar: also show ``n_frames`` on the progress bar.
    """

    def __init__(self, log_pbar: bool = False) -> None:
        self.log_pbar = log_pbar
        self.frames = 0
        """The count logged last."""

    @override
    def on_pre_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> dict[str, Any]:
        self.frames = module.frames
        return {"n_frames": float(module.frames), "log_pbar": self.log_pbar}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"frames": self.frames}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frames = int(state_dict["frames"])

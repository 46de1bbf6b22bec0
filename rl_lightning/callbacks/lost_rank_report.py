"""``LostRankReport``: a run whose ranks lost one of theirs says which, instead of only the collective's error."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from typing_extensions import override

from rl_lightning.distributed import lost_rank_message

log = logging.getLogger(__name__)


class LostRankReport(pl.Callback):
    """When a collective (gradient all-reduce, the per-batch statistics, a checkpoint's barrier) fails because
    another rank's process is gone, logs an error that names the lost rank and node and how to resume, before
    Lightning re-raises the collective's own error (gloo's "Connection closed by peer", which names an address).

    Every ``RLModule`` adds this callback (``configure_callbacks``); it does nothing on one process.
    """

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        message = lost_rank_message(trainer, exception)
        if message is not None:
            log.error(message)

"""``GracefulInterrupt``: Ctrl-C finishes the current collector batch, writes ``last.ckpt`` and ends the fit."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

log = logging.getLogger(__name__)


class GracefulInterrupt(pl.Callback):
    """The first Ctrl-C (SIGINT) of a fit stops it at the end of the current collector batch, with a checkpoint.

    An interrupt in the middle of a batch would leave the inner loop half done; instead the signal only sets a
    flag, and at the end of the batch (agreed by all DDP ranks through the module's per-batch all-reduce of
    episode statistics, ``RLModule.stop_agreed``) the fit writes ``last.ckpt`` into the
    ``ModelCheckpoint``'s directory and stops, so ``--ckpt_path last`` continues exactly from there. A second
    Ctrl-C aborts at once (Lightning's own handling of ``KeyboardInterrupt``). Every ``RLModule`` adds this
    callback (``configure_callbacks``); it does nothing outside the main thread, where signals cannot be caught.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous: Any = None
        self._module: Any = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = False
        self._module = pl_module
        if hasattr(pl_module, "stop_requested"):
            setattr(pl_module, "stop_requested", False)  # noqa: B010  (an RLModule attribute)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: abort now
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        if self._module is not None:
            self._module.stop_requested = True
        log.warning("Interrupted: stopping after this collector batch, with a checkpoint (Ctrl-C again to abort).")

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The module agrees on a stop across ranks with its per-batch all-reduce of episode statistics.
        if not self._installed or not getattr(pl_module, "stop_agreed", self.requested):
            return
        trainer.should_stop = True
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath is not None:
            path = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            log.warning(f"Saved {path}; resume with --ckpt_path last (or --ckpt_path {path}).")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

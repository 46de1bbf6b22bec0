"""``LogTiming``: wall time per collector batch, split into collection and optimization."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class LogTiming(RLCallback):
    """Logs, per collector batch, ``time/collect``, ``time/optim`` and ``time/batch`` (their sum), in seconds.

    Collection is the time from the end of the previous batch's optimization (or the start of training) to
    ``on_batch_process``: the collector's env steps and policy calls, plus whatever Lightning does between
    two batches (logging, validation when it runs, checkpoints). Optimization is the time from
    ``on_batch_process`` to the end of ``on_post_steps``: the algorithm's ``prepare_batch``, every inner
    step and the hooks around them. torchrl's trainer gained the same split later (``LogTiming``); for
    Lightning-level profiling use the Trainer's ``profiler`` argument, for a time budget Lightning's ``Timer``.

    Args:
        log_pbar: also show the three times on the progress bar.
    """

    def __init__(self, log_pbar: bool = False) -> None:
        self.log_pbar = log_pbar
        self.collect = 0.0
        """Seconds of the last batch's collection."""
        self.optim = 0.0
        """Seconds of the last batch's optimization."""
        self._mark = 0.0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = time.perf_counter()

    @override
    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        now = time.perf_counter()
        self.collect, self._mark = now - self._mark, now

    @override
    def on_post_steps(self, trainer: pl.Trainer, module: RLModule) -> None:
        now = time.perf_counter()
        self.optim, self._mark = now - self._mark, now

    @override
    def on_post_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> dict[str, Any]:
        return {
            "time/collect": self.collect,
            "time/optim": self.optim,
            "time/batch": self.collect + self.optim,
            "log_pbar": self.log_pbar,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"collect": self.collect, "optim": self.optim}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.collect = float(state_dict["collect"])
        self.optim = float(state_dict["optim"])

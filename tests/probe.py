"""A callback for tests with real processes: each rank saves its state at the start or end of a fit, to compare
ranks afterwards, or a resumed run with the checkpoint it resumed from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


class SaveRankState(pl.Callback):
    """At the end of a fit (or at its start, after a checkpoint was restored, with ``at_start=True``), rank ``r``
    saves its parameters, optimizer state, counters and replay buffer (if any) to ``dirpath/rank{r}.pt``."""

    def __init__(self, dirpath: str, at_start: bool = False) -> None:
        self.dirpath = Path(dirpath)
        self.at_start = at_start

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.at_start:
            self._save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not self.at_start:
            self._save(trainer, pl_module)

    def _save(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        optimizers = pl_module.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        state = {
            "params": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "optimizers": [o.optimizer.state_dict() for o in optimizers],
            "frames": pl_module.frames,
            "updates": pl_module.updates,
            "episodes": pl_module.episodes,
            "batches": pl_module.loop.batches,
            "global_step": trainer.global_step,
            "broadcast_buffers": getattr(trainer.strategy.model, "broadcast_buffers", None),
            "torch_rng": torch.get_rng_state(),
            "node_rank": trainer.node_rank,
            "cluster_environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            "env_seed": getattr(trainer.datamodule, "rank_seed", None),
        }
        buffer = getattr(pl_module, "replay_buffer", None)
        if buffer is not None:
            state["buffer"] = buffer.state_dict()
        torch.save(state, self.dirpath / f"rank{trainer.global_rank}.pt")


class SavePidAfterFirstBatch(pl.Callback):
    """Rank ``r`` writes its process id to ``dirpath/rank{r}.pid`` once its first training batch is done: a test
    that kills a node's training process waits for that file, so the kill lands mid-run."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            staged = self.dirpath / f"rank{trainer.global_rank}.pid.tmp"
            staged.write_text(str(os.getpid()))
            staged.rename(self.dirpath / f"rank{trainer.global_rank}.pid")  # whole, or not there

"""``RolloutRecorder``: writes collector batches to disk as memory-mapped tensordicts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning._checks import check_choice, check_int
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule

Stage = Literal["collected", "prepared"]


class RolloutRecorder(RLCallback):
    """Writes every ``interval``-th collector batch to ``<dirpath>/batch_<n>`` (``n`` counts the batches from 1,
    six digits) as a memory-mapped tensordict (``TensorDict.memmap``: a directory with one ``.memmap`` file per
    entry and a ``meta.json``), for offline analysis or replay. Load one back with::

        batch = TensorDict.load_memmap("runs/ppo/version_0/rollouts/batch_000010")

    Under DDP each rank writes its own batches under ``<dirpath>/rank<r>/``. Batches on a GPU are copied to the
    files (the memory map lives on the CPU).

    Args:
        interval: write every ``interval``-th batch (batches ``interval``, ``2 * interval``, ...).
        dirpath: where the batches go; ``None`` is ``<trainer.log_dir>/rollouts`` (``default_root_dir`` without a
            logger).
        stage: ``"collected"`` writes the batch as the collector returned it (at ``on_batch_process``, before the
            callbacks after this one change it); ``"prepared"`` writes it after every ``on_batch_process`` hook
            and the algorithm's ``prepare_batch`` (with PPO's advantages and value targets), at
            ``on_pre_optim_steps``.

    Example::

        trainer = make_trainer(callbacks=[RolloutRecorder(interval=10, dirpath="rollouts")])
    """

    def __init__(self, interval: int = 1, dirpath: str | None = None, stage: Stage = "collected") -> None:
        check_int("interval", interval, hint="Give the number of batches between two writes (1: every batch).")
        check_choice("stage", stage, ("collected", "prepared"))
        self.interval = interval
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.stage: Stage = stage
        self.batches = 0
        """Collector batches seen (on this rank)."""
        self.last_path: Path | None = None
        """The directory of the batch written last."""
        self._dir: Path | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=str(self.dirpath), stage=self.stage)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.dirpath is None:
            # trainer.log_dir broadcasts from rank zero, so every rank asks for it here.
            self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "rollouts"
        self._dir = self.dirpath / f"rank{trainer.global_rank}" if trainer.world_size > 1 else self.dirpath

    @override
    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        self.batches += 1
        if self.stage == "collected" and self.batches % self.interval == 0:
            self._write(batch)

    @override
    def on_pre_optim_steps(self, trainer: pl.Trainer, module: RLModule) -> None:
        if self.stage == "prepared" and self.batches % self.interval == 0 and module.loop.batch is not None:
            self._write(module.loop.batch)

    def _write(self, batch: TensorDict) -> None:
        assert self._dir is not None, "setup() sets the directory"
        path = self._dir / f"batch_{self.batches:06d}"
        batch.to("cpu").memmap(path)
        self.last_path = path

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])

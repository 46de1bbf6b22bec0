"""``ReplayBufferTrainer``: the replay buffer wired into the RL loop, as in torchrl's trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning.callbacks.rl_callback import RLCallback
from rl_lightning.checkpoint import stage_tensors, staging_dir
from rl_lightning.distributed import gather_per_rank, own_state
from rl_lightning.replay import TD_ERROR, ReplayBuffer

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class ReplayBufferTrainer(RLCallback):
    """Fills a replay buffer with every collected batch, keeps its priorities and carries it in checkpoints.

    - ``on_batch_process``: ``buffer.extend(batch)`` (the batch itself passes on unchanged);
    - ``on_post_loss``: with a prioritized buffer, ``buffer.update_priority(sub["index"], sub["td_error"])``, the
      per-sample TD errors the loss wrote into its replay sample.

    The replay samples themselves are drawn by the algorithm (``OffPolicyModule.optim_batches``), which adds this
    callback for its own buffer.

    The buffer's contents are part of this callback's ``state_dict``, so full checkpoints carry them (a
    memory-mapped buffer's as views of its files; weights-only checkpoints, such as the configs' ``best-*.ckpt``,
    leave them out). Under DDP each rank has its own buffer and writes its stored transitions and priorities to
    files of its own while the checkpoint is built (:func:`~rl_lightning.checkpoint.stage_tensors`); only small
    references cross the process group, and rank zero moves the files beside the checkpoint
    (``<name>.data-<token>/rank<r>/``). Each rank resumes with its own buffer; on another number of ranks, rank
    ``r`` takes saved rank ``r mod n``'s, with a warning (:func:`~rl_lightning.distributed.own_state`).

    Args:
        buffer: the :class:`~rl_lightning.replay.ReplayBuffer`.
    """

    def __init__(self, buffer: ReplayBuffer) -> None:
        self.buffer = buffer
        self._trainer: pl.Trainer | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        self.buffer.extend(batch)

    @override
    def on_post_loss(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict, losses: TensorDict) -> None:
        if self.buffer.prioritized and TD_ERROR in batch.keys():
            self.buffer.update_priority(batch["index"], batch[TD_ERROR])

    @override
    def state_dict(self) -> dict[str, Any]:
        state = self.buffer.state_dict()
        directory = staging_dir(self._trainer)
        if directory is not None:  # DDP: the transitions go to this rank's files, not through the process group
            assert self._trainer is not None
            rank = self._trainer.global_rank
            for name in ("data", "priority"):
                state[name] = stage_tensors(state[name], directory, rank)
        return gather_per_rank(self._trainer, {"buffer": state})

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(own_state(self._trainer, state_dict, "replay buffer")["buffer"])

"""``ReplayBufferTrainer``: the replay buffer wired into the RL loop, as in torchrl's trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning._checks import check_int
from rl_lightning.callbacks.rl_callback import RLCallback
from rl_lightning.checkpoint import stage_tensors, staging_dir
from rl_lightning.distributed import gather_per_rank, own_state

if TYPE_CHECKING:
    from rl_lightning.module import RLModule
    from rl_lightning.replay import ReplayBuffer

TD_ERROR = "td_error"
"""Key under which a loss writes per-sample TD errors into the sampled batch (torchrl's convention)."""


class ReplayBufferTrainer(RLCallback):
    """Extends a replay buffer with every collected batch and replaces each minibatch with a replay sample.

    - ``on_batch_process``: ``buffer.extend(batch)`` (the batch itself passes on unchanged);
    - ``on_process_optim_batch``: returns ``buffer.sample(batch_size)`` on the module's device;
    - ``on_post_loss``: with a prioritized buffer, ``buffer.update_priority(sub["index"], sub["td_error"])``.

    The buffer's contents are part of this callback's ``state_dict``, so full checkpoints carry them (a
    memory-mapped buffer's as views of its files; weights-only checkpoints, such as the configs' ``best-*.ckpt``,
    leave them out). Under DDP each rank has its own buffer and writes its stored transitions and priorities to
    files of its own while the checkpoint is built (:func:`~rl_lightning.checkpoint.stage_tensors`); only small
    references cross the process group, and rank zero moves the files beside the checkpoint
    (``<name>.data-<token>/rank<r>/``). Each rank resumes with its own buffer; on another number of ranks, rank
    ``r`` takes saved rank ``r mod n``'s, with a warning (:func:`~rl_lightning.distributed.own_state`).

    Args:
        buffer: the :class:`~rl_lightning.replay.ReplayBuffer`.
        batch_size: transitions per sample (one optimizer step).
    """

    def __init__(self, buffer: ReplayBuffer, batch_size: int) -> None:
        check_int("batch_size", batch_size, hint="It is the transitions per replay sample, e.g. 256.")
        if batch_size > buffer.capacity:
            raise ValueError(
                f"batch_size={batch_size} is larger than the replay buffer's capacity={buffer.capacity}: a sample "
                "could never be drawn. Raise the buffer size or lower the batch size."
            )
        self.buffer = buffer
        self.batch_size = batch_size
        self._trainer: pl.Trainer | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.buffer.device = pl_module.device  # samples arrive where the module trains

    @override
    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        self.buffer.extend(batch)

    @override
    def on_process_optim_batch(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> TensorDict:
        return self.buffer.sample(self.batch_size)

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

"""``RLCallback``: a Lightning callback with the hook points of the RL loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from tensordict import TensorDict

from rl_lightning.loop import RL_HOOKS

if TYPE_CHECKING:
    from rl_lightning.module import RLModule

LogDict = dict[str, Any] | None


class RLCallback(pl.Callback):
    """A Lightning callback that also plugs into the RL loop run by ``RLModule.training_step``.

    For each collector batch the loop calls, on the callbacks that override them::

        batch = on_batch_process(trainer, module, batch)           # may return a replacement batch
        on_pre_steps_log(trainer, module, batch) -> dict | None     # logged
        on_pre_optim_steps(trainer, module)
        for each epoch (module.optim_epochs passes; 1 for off-policy algorithms):
            on_pre_epoch(trainer, module, epoch)
            on_pre_epoch_log(trainer, module, epoch) -> dict | None
            for each minibatch of the epoch (one optimizer step each):
                sub = on_process_optim_batch(trainer, module, sub)  # may replace the minibatch
                losses = module.loss(sub)
                losses = on_process_loss(trainer, module, sub, losses)  # may replace the losses
                on_post_loss(trainer, module, sub, losses)
                losses = on_optimizer(trainer, module, losses)      # may take over part of the step
                module.step_optimizers(losses)                       # backward, clip, step
                on_post_optim(trainer, module)
                on_post_optim_log(trainer, module, sub) -> dict | None
            on_post_epoch(trainer, module, epoch)
            on_post_epoch_log(trainer, module, epoch, epoch_losses) -> dict | None  # the epoch's mean losses
        on_post_steps(trainer, module)
        on_post_optim_complete_log(trainer, module, batch_losses) -> dict | None    # the batch's mean losses
        on_post_steps_log(trainer, module, batch) -> dict | None

    Data-processing hooks return a replacement TensorDict, or ``None`` to keep what they were given.
    Logging hooks return a dict of metrics (logged through the module, with ``"log_pbar": True`` putting
    them on the progress bar) or ``None``. Only overridden hooks are called; the dispatch table is built
    once per fit. Being a Lightning ``Callback``, an ``RLCallback`` also receives every Lightning hook
    and keeps its state in ``state_dict``/``load_state_dict``.

    Example:
        >>> class CountUpdates(RLCallback):
        ...     def __init__(self):
        ...         self.count = 0
        ...     def on_post_optim(self, trainer, module):
        ...         self.count += 1
        ...     def on_post_steps_log(self, trainer, module, batch):
        ...         return {"updates_seen": self.count}
    """

    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> TensorDict | None:
        """A new collector batch arrived (e.g. extend a replay buffer, normalize rewards, select keys)."""

    def on_pre_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> LogDict:
        """Log something about the collected batch before the optimization steps."""

    def on_pre_optim_steps(self, trainer: pl.Trainer, module: RLModule) -> None:
        """The optimization steps of this batch are about to start."""

    def on_pre_epoch(self, trainer: pl.Trainer, module: RLModule, epoch: int) -> None:
        """A pass over the batch's minibatches (PPO's epoch) is about to start; ``epoch`` counts from 0."""

    def on_pre_epoch_log(self, trainer: pl.Trainer, module: RLModule, epoch: int) -> LogDict:
        """Log something before a pass over the batch's minibatches."""

    def on_process_optim_batch(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> TensorDict | None:
        """The algorithm picked the minibatch of an inner step; return a replacement or ``None``."""

    def on_process_loss(
        self, trainer: pl.Trainer, module: RLModule, batch: TensorDict, losses: TensorDict
    ) -> TensorDict | None:
        """The loss of an inner step was computed; return replacement losses (e.g. reweighted terms) or ``None``."""

    def on_post_loss(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict, losses: TensorDict) -> None:
        """The loss of an inner step was computed (e.g. update priorities from TD errors)."""

    def on_optimizer(self, trainer: pl.Trainer, module: RLModule, losses: TensorDict) -> TensorDict | None:
        """The optimizer step is about to run on ``losses``.

        Return the losses the module's own step should still handle (e.g. ``losses`` without the entries
        this callback stepped with its own optimizer), or ``None`` to leave them all to the module. When no
        ``loss_*`` entry is left, the module's step is skipped.
        """

    def on_post_optim(self, trainer: pl.Trainer, module: RLModule) -> None:
        """An optimizer step finished (e.g. update target networks)."""

    def on_post_optim_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> LogDict:
        """Log something after an optimizer step."""

    def on_post_epoch(self, trainer: pl.Trainer, module: RLModule, epoch: int) -> None:
        """A pass over the batch's minibatches finished (also the last one before an early stop)."""

    def on_post_epoch_log(self, trainer: pl.Trainer, module: RLModule, epoch: int, losses: TensorDict) -> LogDict:
        """Log something after a pass; ``losses`` holds the mean of every loss entry over its steps."""

    def on_post_steps(self, trainer: pl.Trainer, module: RLModule) -> None:
        """All optimization steps of the batch finished (e.g. push weights to remote collectors)."""

    def on_post_optim_complete_log(self, trainer: pl.Trainer, module: RLModule, losses: TensorDict) -> LogDict:
        """Log something about the batch's updates; ``losses`` holds the mean of every loss entry over all
        its steps (what the loop logs as ``train/<entry>``)."""

    def on_post_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> LogDict:
        """Log something after the optimization steps of the batch."""

    def implemented_rl_hooks(self) -> set[str]:
        """The RL hooks this callback implements: those its class overrides."""
        return {name for name in RL_HOOKS if getattr(type(self), name) is not getattr(RLCallback, name)}

"""``LRSchedulerHook``: a learning-rate scheduler stepped per collector batch or per optimizer update."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable
from typing_extensions import override

from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class LRSchedulerHook(RLCallback):
    """Builds ``scheduler`` over each of the module's optimizers at fit start and steps it per batch or update.

    Lightning steps the schedulers of ``configure_optimizers`` per epoch or per ``optimizer.step()``; in RL an
    epoch is the whole run and SAC's one update may be several steps, so this callback steps at the RL loop's
    own units: ``interval="batch"`` at ``on_post_steps`` (once per collector batch), ``interval="update"``
    at ``on_post_optim`` (once per inner optimization step). The schedulers' state is in ``state_dict``, so
    a resumed run continues the schedule. Lightning's ``LearningRateMonitor`` logs the optimizer's
    learning rate (``lr-Adam``, per parameter group ``lr-Adam/pg1``, ...) at the start of every logged batch.

    An algorithm that sets its own learning rate each batch (PPO with ``anneal_lr=True``) would overwrite
    the schedule: that combination is refused at fit start.

    Args:
        scheduler: builds the scheduler from an optimizer; from YAML
            ``{class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 10, gamma: 0.5}}``.
        interval: ``"batch"`` or ``"update"``: what one scheduler step is.

    Example::

        LRSchedulerHook(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5), "batch")
    """

    def __init__(self, scheduler: LRSchedulerCallable, interval: Literal["batch", "update"] = "update") -> None:
        if not callable(scheduler):
            raise ValueError(
                f"scheduler={scheduler!r} is not callable: pass a function of the optimizer, e.g. "
                "lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10) (from YAML: its class_path)."
            )
        if interval not in ("batch", "update"):
            raise ValueError(
                f"interval={interval!r} is invalid: expected 'batch' (a step per collector batch) or 'update' "
                "(a step per optimizer update)."
            )
        self.scheduler_factory = scheduler
        self.interval = interval
        self.schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
        self._pending_state: list[dict[str, Any]] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(interval=self.interval)

    @override
    def implemented_rl_hooks(self) -> set[str]:
        return {"on_post_steps" if self.interval == "batch" else "on_post_optim"}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "anneal_lr", False):
            raise ValueError(
                f"{type(pl_module).__name__} anneals its own learning rate (anneal_lr=True), which would overwrite "
                "the LRSchedulerHook's schedule every batch. Set model.anneal_lr=false, or drop the LRSchedulerHook."
            )
        optimizers = pl_module.optimizers(use_pl_optimizer=False)
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        self.schedulers = [self.scheduler_factory(opt) for opt in optimizers]
        if self._pending_state is not None:
            self._load(self._pending_state)
            self._pending_state = None

    def _load(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.schedulers):
            raise ValueError(
                f"The checkpoint holds {len(states)} LRSchedulerHook scheduler states, but the module has "
                f"{len(self.schedulers)} optimizers. Resume with the same algorithm and optimizers."
            )
        for scheduler, state in zip(self.schedulers, states, strict=True):
            scheduler.load_state_dict(state)

    def _step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    @override
    def on_post_steps(self, trainer: pl.Trainer, module: RLModule) -> None:
        self._step()

    @override
    def on_post_optim(self, trainer: pl.Trainer, module: RLModule) -> None:
        self._step()

    @override
    def state_dict(self) -> dict[str, Any]:
        if not self.schedulers:
            return {"schedulers": self._pending_state}
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict["schedulers"]
        if self.schedulers and states is not None:
            self._load(states)
        else:
            self._pending_state = states

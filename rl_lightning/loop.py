"""``RLLoop``: the inner optimization loop of one collector batch, with the RL hooks around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from tensordict import TensorDict

from rl_lightning.functional import loss_terms
from rl_lightning.metrics import Means

LOG_PBAR = "log_pbar"

RL_HOOKS = (
    "on_batch_process",
    "on_pre_steps_log",
    "on_pre_optim_steps",
    "on_pre_epoch",
    "on_pre_epoch_log",
    "on_process_optim_batch",
    "on_process_loss",
    "on_post_loss",
    "on_optimizer",
    "on_post_optim",
    "on_post_optim_log",
    "on_post_epoch",
    "on_post_epoch_log",
    "on_post_steps",
    "on_post_optim_complete_log",
    "on_post_steps_log",
)
"""The hook points in the order the RL loop reaches them (``on_`` + torchrl's stage name): torchrl's ten, and
the ones it added later (``pre_epoch``/``post_epoch`` and their ``_log`` forms, ``process_loss``,
``post_optim_complete_log``). torchrl's ``setup``/``shutdown`` are Lightning's ``setup``/``teardown``.
:class:`~rl_lightning.RLCallback` documents each one's arguments."""


class LoopModule(Protocol):
    """What :class:`RLLoop` uses of the module it runs for: :class:`~rl_lightning.RLModule` has all of it (and may
    implement RL hooks too, called after the callbacks')."""

    updates: int
    """Incremented by the loop after every optimizer step."""

    @property
    def trainer(self) -> pl.Trainer: ...

    @property
    def optim_epochs(self) -> int: ...

    @property
    def stops_optim_early(self) -> bool: ...

    @property
    def logging_batch(self) -> bool: ...

    def prepare_batch(self, batch: TensorDict) -> TensorDict: ...

    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]: ...

    def loss(self, batch: TensorDict) -> TensorDict: ...

    def step_optimizers(self, losses: TensorDict) -> None: ...

    def stop_optim_early(self, epoch_losses: TensorDict) -> bool: ...

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        *,
        prog_bar: bool = ...,
        on_step: bool | None = ...,
        on_epoch: bool | None = ...,
        batch_size: int | None = ...,
    ) -> None: ...


@runtime_checkable
class ImplementsRLHooks(Protocol):
    """What the loop asks of a trainer callback: which of :data:`RL_HOOKS` it implements
    (:class:`~rl_lightning.RLCallback` answers with those its class overrides). Other callbacks take no part."""

    def implemented_rl_hooks(self) -> set[str]: ...


class RLLoop:
    """Runs once per collector batch, from ``RLModule.training_step``.

    Lightning's fit loop is the outer loop (one iteration per collector batch); this is the inner one:
    ``module.optim_epochs`` passes over ``module.optim_batches(batch)``, each item one optimizer step,
    with the RL hooks of :class:`~rl_lightning.RLCallback` around them. The same number of steps runs on
    every rank; an early stop (``module.stop_optim_early``) must be agreed across ranks by the module.

    The dispatch table (which callbacks implement which hook) is built once per fit in :meth:`setup`.
    Callbacks are called in ``trainer.callbacks`` order, then the module if it implements the hook.
    """

    def __init__(self, module: LoopModule) -> None:
        self.module = module
        self.hooks: dict[str, list[Callable[..., Any]]] = {name: [] for name in RL_HOOKS}
        self.batches = 0
        """Collector batches processed (all of this run and the runs it resumed)."""
        self._loss_means: Means | None = None
        self.batch: TensorDict | None = None
        """The collector batch being trained on, after ``on_batch_process`` and ``module.prepare_batch`` (PPO's
        advantages included): what a hook that samples from the whole batch (``BatchSubSampler``) reads."""

    def setup(self, trainer: pl.Trainer) -> None:
        """Works out which callbacks (and whether the module) implement each hook."""
        callbacks = [cb for cb in trainer.callbacks if isinstance(cb, ImplementsRLHooks)]  # type: ignore[attr-defined]
        for name in RL_HOOKS:
            fns = [getattr(cb, name) for cb in callbacks if name in cb.implemented_rl_hooks()]
            module_fn = getattr(self.module, name, None)
            if callable(module_fn):
                fns.append(module_fn)
            self.hooks[name] = fns

    # -- dispatch ------------------------------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> None:
        fns = self.hooks[name]
        if not fns:  # most hooks have no implementation: skip even the trainer lookup
            return
        trainer, module = self.module.trainer, self.module
        for fn in fns:
            fn(trainer, module, *args)

    def _process(self, name: str, data: TensorDict, *args: Any) -> TensorDict:
        fns = self.hooks[name]
        if not fns:
            return data
        trainer, module = self.module.trainer, self.module
        for fn in fns:
            replacement = fn(trainer, module, data, *args)
            if replacement is not None:
                data = replacement
        return data

    def _log(self, name: str, *args: Any) -> None:
        fns = self.hooks[name]
        if not fns:
            return
        trainer, module = self.module.trainer, self.module
        for fn in fns:
            metrics = fn(trainer, module, *args)
            if metrics and module.logging_batch:
                metrics = dict(metrics)
                prog_bar = bool(metrics.pop(LOG_PBAR, False))
                module.log_dict(metrics, prog_bar=prog_bar, on_step=True, on_epoch=False, batch_size=1)

    # -- the loop ------------------------------------------------------------------------------------

    def run(self, batch: TensorDict) -> None:
        """Processes one collector batch: hooks, ``module.prepare_batch``, the optimizer steps, logging."""
        module, hooks = self.module, self.hooks
        batch = self._process("on_batch_process", batch)
        batch = self.batch = module.prepare_batch(batch)
        self._log("on_pre_steps_log", batch)
        self._call("on_pre_optim_steps")

        # Loss entries are summed into one stacked tensor (cheaper than TensorDict arithmetic per step), and
        # only where they are used: for the logs and the hooks that get mean losses, and for an early stop.
        early_stop = module.optim_epochs > 1 and module.stops_optim_early
        track_epochs = early_stop or bool(hooks["on_post_epoch_log"])
        track = module.logging_batch or track_epochs or bool(hooks["on_post_optim_complete_log"])
        names: list[Any] = []
        total: torch.Tensor | None = None
        steps = 0
        for epoch in range(module.optim_epochs):
            self._call("on_pre_epoch", epoch)
            self._log("on_pre_epoch_log", epoch)
            epoch_total: torch.Tensor | None = None
            epoch_steps = 0
            for sub in module.optim_batches(batch, epoch):
                sub = self._process("on_process_optim_batch", sub)
                losses = module.loss(sub)
                if hooks["on_process_loss"]:
                    losses = self._process_loss(sub, losses)
                self._call("on_post_loss", sub, losses)
                remaining = self._process("on_optimizer", losses)
                if remaining is losses or loss_terms(remaining):
                    module.step_optimizers(remaining)
                module.updates += 1
                self._call("on_post_optim")
                self._log("on_post_optim_log", sub)
                if track:
                    if not names:
                        names = list(losses.keys())
                    values = torch.stack([losses.get(k).detach() for k in names])
                    epoch_total = values if epoch_total is None else epoch_total.add_(values)
                epoch_steps += 1
            if epoch_steps == 0:
                break
            steps += epoch_steps
            epoch_mean = None
            if epoch_total is not None:
                total = epoch_total.clone() if total is None else total.add_(epoch_total)
                if track_epochs:
                    epoch_mean = TensorDict(dict(zip(names, epoch_total / epoch_steps, strict=True)), batch_size=[])
            self._call("on_post_epoch", epoch)
            if epoch_mean is not None:
                self._log("on_post_epoch_log", epoch, epoch_mean)
            if (
                early_stop
                and epoch_mean is not None
                and epoch + 1 < module.optim_epochs
                and module.stop_optim_early(epoch_mean)
            ):
                break

        self._call("on_post_steps")
        if total is not None:
            mean = TensorDict(dict(zip(names, total / steps, strict=True)), batch_size=[])
            self._log("on_post_optim_complete_log", mean)
            if module.logging_batch:
                self._log_losses(names, total, steps)
        self._log("on_post_steps_log", batch)
        self.batches += 1
        self.batch = None

    def _process_loss(self, batch: TensorDict, losses: TensorDict) -> TensorDict:
        trainer, module = self.module.trainer, self.module
        for fn in self.hooks["on_process_loss"]:
            replacement = fn(trainer, module, batch, losses)
            if replacement is not None:
                losses = replacement
        return losses

    def _log_losses(self, names: list[Any], total: torch.Tensor, steps: int) -> None:
        """Logs the mean of every loss entry over the batch's updates on all ranks as ``train/<key>``, and the mean
        of their sum as ``train/loss`` (:class:`~rl_lightning.metrics.Means`: one sync for all of them)."""
        is_loss = torch.tensor([isinstance(k, str) and k.startswith("loss_") for k in names], device=total.device)
        values = torch.cat([total, (total * is_loss).sum().unsqueeze(0)])
        if self._loss_means is None or self._loss_means.size != len(values) or self._loss_means.device != values.device:
            self._loss_means = Means(len(values)).to(values.device)
        self._loss_means.reset()
        self._loss_means.update(values, steps)
        metrics = dict(
            zip(
                [*(f"train/{k}" for k in names), "train/loss"], self._loss_means.compute().float().unbind(), strict=True
            )
        )
        self.module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])

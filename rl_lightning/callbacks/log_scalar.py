"""``LogScalar``: logs a reduction of any entry of the collector batch, as torchrl's hook does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning.callbacks._nested_keys import dotted, leaf_keys, parse_key
from rl_lightning.callbacks.rl_callback import RLCallback
from rl_lightning.metrics import Moments

if TYPE_CHECKING:
    from rl_lightning.module import RLModule

Reduction = Literal["mean", "sum", "min", "max"]
_REDUCTIONS = ("mean", "sum", "min", "max")


class LogScalar(RLCallback):
    """Logs ``reduction(batch[key])`` of each collector batch at ``on_pre_steps_log`` (and its standard
    deviation under ``<logname>/std``).

    The batch is the prepared one (after ``on_batch_process`` and the algorithm's ``prepare_batch``), so
    keys an algorithm writes, such as PPO's ``advantage``, can be logged too. Boolean entries are counted as
    0/1 (``key="next.done", reduction="sum"`` logs the episodes ended in the batch). Under DDP the statistic is of
    every rank's batch together (:class:`~rl_lightning.metrics.Moments`, synced when computed).

    Args:
        key: the entry; a nested key as a dotted string (``"next.reward"``) or a list of names
            (``["next", "reward"]``).
        logname: the metric's name; ``None`` gives ``rollout/<dotted key>`` (``rollout/next.reward``).
        reduction: ``"mean"``, ``"sum"``, ``"min"`` or ``"max"`` over every element of the entry.
        include_std: also log the standard deviation of the entry as ``<logname>/std``.
        log_pbar: also show the value on the progress bar.

    Example:
        >>> import torch
        >>> hook = LogScalar("next.reward", reduction="sum", include_std=False)
        >>> batch = TensorDict({"next": {"reward": torch.ones(2, 3, 1)}}, batch_size=[2, 3])
        >>> hook.on_pre_steps_log(None, None, batch)["rollout/next.reward"]
        tensor(6.)
    """

    def __init__(
        self,
        key: str | Sequence[str] = "next.reward",
        logname: str | None = None,
        reduction: Reduction = "mean",
        include_std: bool = True,
        log_pbar: bool = False,
    ) -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is invalid: expected one of {', '.join(_REDUCTIONS)}.")
        self.key = parse_key(key)
        self.logname = logname if logname is not None else f"rollout/{dotted(self.key)}"
        if not self.logname:
            raise ValueError("logname='' is invalid: give a metric name, or None for rollout/<key>.")
        self.reduction = reduction
        self.include_std = include_std
        self.log_pbar = log_pbar
        self.batches = 0
        """Collector batches seen."""
        self._moments = Moments()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=dotted(self.key), logname=self.logname)

    @override
    def on_pre_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> dict[str, Any] | None:
        self.batches += 1
        value = batch.get(self.key, None)
        if value is None:
            raise ValueError(
                f"LogScalar(key={dotted(self.key)!r}): the batch has no such entry. Available keys: "
                f"{', '.join(leaf_keys(batch))}. Set key to one of them (nested keys dotted, e.g. 'next.reward')."
            )
        if module is not None and not module.logging_batch:
            return None  # this batch's metrics are not written: skip the reduction
        self._moments.reset()
        self._moments.update(value)
        stats = self._moments.compute()  # of every rank's batch under DDP
        metrics: dict[str, Any] = {self.logname: stats[self.reduction].float()}
        if self.include_std:
            metrics[f"{self.logname}/std"] = stats["std"].float()
        metrics["log_pbar"] = self.log_pbar
        return metrics

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._moments = self._moments.to(pl_module.device)  # where the batch is, and what the process group syncs

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])

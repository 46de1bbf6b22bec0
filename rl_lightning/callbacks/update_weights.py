"""``UpdateWeights``: pushes the module's policy weights to a collector that runs its own copy of the policy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from typing_extensions import override

from rl_lightning._checks import check_int
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


@runtime_checkable
class WeightSyncedData(Protocol):
    """Data whose collector steps the envs with a copy of the module's policy (in worker processes, or on another
    device), and can be told to copy the module's current weights into it
    (:class:`~rl_lightning.interop.torchrl_data.TorchRLDataModule`)."""

    def update_policy_weights_(self) -> None:
        """Copies the module's current policy weights into the collector's policy."""


class UpdateWeights(RLCallback):
    """Every ``interval`` collector batches, copies the module's policy weights into the data's collector, so that the
    next batch is collected by the weights the last updates produced (torchrl's ``UpdateWeights(collector,
    update_weights_interval)`` hook).

    It runs at ``on_post_steps``, after the batch's last optimizer step and before the next batch is collected (the
    RL loop collects each batch when the module asks for it, never one ahead). It is needed where the collector runs
    a copy of the policy that the optimizer does not write: a torchrl ``MultiSyncCollector`` whose workers build
    their own policy (``policy_factory``), or a policy trained on a GPU and run on CPU workers. A collector that steps
    the module's own policy object (``RLDataModule``'s, or a torchrl ``Collector`` in this process) needs none, and
    one whose workers map the policy's CPU parameters in shared memory sees each update without it; for them the
    copy costs one pass over the weights. ``interval > 1`` trades on-policy data for fewer copies (off-policy
    algorithms tolerate it; PPO's ratio and clipping then start from stale log-probs).

    Args:
        interval: collector batches between two weight copies (1: after every batch).

    Raises:
        ValueError: at setup, when the data has no collector to update (``RLDataModule`` steps the module's own
            policy), naming the data's class and what to do.

    Example:
        >>> hook = UpdateWeights(interval=1)  # every batch collected with the weights after the previous update
    """

    def __init__(self, interval: int = 1) -> None:
        check_int("interval", interval, hint="It is the collector batches between weight copies, e.g. 1.")
        self.interval = interval
        self.batches = 0
        """Collector batches trained on (with those before a resumed checkpoint); weights are copied at every multiple
        of ``interval``."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        data = getattr(trainer, "datamodule", None)
        if not isinstance(data, WeightSyncedData):
            raise ValueError(
                f"UpdateWeights copies the policy's weights into the data's collector, but the data "
                f"({type(data).__name__}) has no update_policy_weights_(): its collector steps the module's own "
                "policy, which is always current. Remove UpdateWeights from trainer.callbacks, or train on a "
                "rl_lightning.interop.torchrl_data.TorchRLDataModule whose collector runs a copy of the policy."
            )

    @override
    def on_post_steps(self, trainer: pl.Trainer, module: RLModule) -> None:
        self.batches += 1
        if self.batches % self.interval == 0:
            data: WeightSyncedData = trainer.datamodule  # type: ignore[attr-defined]  # checked in setup
            data.update_policy_weights_()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])

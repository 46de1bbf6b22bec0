"""``TargetNetUpdaterHook``: moves target networks towards their online networks every few updates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from rl_lightning._checks import check_int, check_range
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class TargetNetUpdaterHook(RLCallback):
    """Every ``interval`` updates, ``target ← (1 - tau) · target + tau · online`` for each of the module's pairs.

    ``tau=1`` copies the online networks (a hard update, DQN's), ``tau < 1`` with ``interval=1`` is Polyak averaging
    after every update (SAC's), and ``tau < 1`` with ``interval=d`` follows TD3's delayed updates. The pairs come
    from ``module.target_networks()`` (``[(online, target), ...]``). An update the module skipped (NaN or inf
    gradients with ``nonfinite: skip``, counted in ``module.skipped_updates``) changed nothing and does not count.

    Args:
        tau: how far each target update moves the targets, in ``(0, 1]``.
        interval: updates between target updates.

    Example:
        >>> hook = TargetNetUpdaterHook(tau=1.0, interval=1000)  # DQN: a copy every 1000 updates
    """

    def __init__(self, tau: float = 0.005, interval: int = 1) -> None:
        check_range("tau", tau, 0.0, 1.0, "Use e.g. tau=0.005, or 1 to copy the online networks.", low_inclusive=False)
        check_int("interval", interval, hint="It is the number of updates between target updates, e.g. 1.")
        self.tau = tau
        self.interval = interval
        self.updates = 0
        """Applied updates seen (skipped ones left out); the targets move at every multiple of ``interval``."""
        self._skipped = 0  # the module's skipped_updates at the last update seen
        self._lists: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._lists_of: RLModule | None = None

    def _parameter_lists(self, module: RLModule) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The online and target parameters, listed once per module. The lists hold the parameter objects
        themselves, which a device move (``.to()``, Lightning's ``.cpu()`` at the end of a fit) keeps while
        replacing their data; a detached view would go on pointing at the old data."""
        if self._lists is None or self._lists_of is not module:
            online: list[torch.Tensor] = []
            target: list[torch.Tensor] = []
            for source, copy in module.target_networks():
                online += list(source.parameters())
                target += list(copy.parameters())
            self._lists, self._lists_of = (online, target), module
        return self._lists

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        target_networks = getattr(pl_module, "target_networks", None)
        if target_networks is None or not target_networks():
            raise ValueError(
                f"TargetNetUpdaterHook updates target networks, but {type(pl_module).__name__} has none "
                "(its target_networks() is empty). Remove the hook from trainer.callbacks."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._skipped = int(getattr(pl_module, "skipped_updates", 0))

    @override
    @torch.no_grad()
    def on_post_optim(self, trainer: pl.Trainer, module: RLModule) -> None:
        if module.skipped_updates != self._skipped:  # this update was skipped: nothing changed, nothing counts
            self._skipped = module.skipped_updates
            return
        self.updates += 1
        if self.updates % self.interval:
            return
        online, target = self._parameter_lists(module)
        if self.tau == 1.0:
            torch._foreach_copy_(target, online)
        else:
            torch._foreach_lerp_(target, online, self.tau)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])

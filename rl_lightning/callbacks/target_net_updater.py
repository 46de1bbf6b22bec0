"""``TargetNetUpdaterHook``: moves target networks towards their online networks after each update."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
from typing_extensions import override

from rl_lightning._checks import check_int, check_range
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class TargetNetUpdaterHook(RLCallback):
    """Updates the module's target networks at ``post_optim``: Polyak averaging or a periodic hard copy.

    The pairs come from ``module.target_networks()`` (``[(online, target), ...]``).

    Args:
        mode: ``"soft"``: ``target ← (1 - tau) · target + tau · online`` after every update;
            ``"hard"``: ``target ← online`` every ``interval`` updates.
        tau: the Polyak coefficient of soft updates, in ``(0, 1]``.
        interval: updates between hard copies.
    """

    def __init__(self, mode: Literal["soft", "hard"] = "soft", tau: float = 0.005, interval: int = 1000) -> None:
        if mode not in ("soft", "hard"):
            raise ValueError(f"mode={mode!r} is invalid: expected 'soft' (Polyak averaging) or 'hard' (copy).")
        check_range("tau", tau, 0.0, 1.0, "Use e.g. tau=0.005 (1 copies the online networks).", low_inclusive=False)
        check_int("interval", interval, hint="It is the number of updates between hard copies, e.g. 1000.")
        self.mode = mode
        self.tau = tau
        self.interval = interval
        self.updates = 0
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
    @torch.no_grad()
    def on_post_optim(self, trainer: pl.Trainer, module: RLModule) -> None:
        self.updates += 1
        if self.mode == "hard" and self.updates % self.interval:
            return
        online, target = self._parameter_lists(module)
        if self.mode == "soft":
            torch._foreach_lerp_(target, online, self.tau)
        else:
            torch._foreach_copy_(target, online)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])

"""Attach a plain function to one hook point, the way torchrl's ``Trainer.register_op`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from tensordict import TensorDictBase
from typing_extensions import override

from rl_lightning._checks import check_choice, check_int
from rl_lightning.callbacks.rl_callback import RL_HOOKS, RLCallback


class FunctionHook(RLCallback):
    """Calls ``fn`` at one hook point, every ``interval`` calls of that hook.

    ``fn`` receives the hook's data arguments only, as torchrl's hooks do: the batch for
    ``batch_process``/``process_optim_batch``/``pre_steps_log``/``post_optim_log``/``post_steps_log``,
    ``(batch, losses)`` for ``process_loss``/``post_loss``, the losses for ``optimizer`` and
    ``post_optim_complete_log``, the epoch for ``pre_epoch``/``post_epoch``/``pre_epoch_log``,
    ``(epoch, losses)`` for ``post_epoch_log``, nothing for ``pre_optim_steps``/``post_optim``/``post_steps``.
    What it returns is what the hook returns (a replacement batch or losses, a dict to log, ...). Porting
    torchrl code::

        trainer.register_op("post_optim_log", fn)        # torchrl
        callbacks.append(FunctionHook("post_optim_log", fn))  # rl_lightning

    At seven stages torchrl's ``Trainer`` passes other arguments; ``convention="torchrl"`` passes those, so a
    function written for ``register_op`` runs unchanged at every stage:

    ========================== ================================================ ===============================
    stage                      ``convention="torchrl"``: ``fn`` gets             what its result does
    ========================== ================================================ ===============================
    ``pre_epoch``              the collector batch (after ``prepare_batch``)     must be that batch (modified in
                                                                                place), or ``None``
    ``pre_epoch_log``,         the collector batch                               logged (a dict)
    ``post_epoch_log``
    ``post_epoch``             nothing                                           ignored
    ``post_loss``              the minibatch                                     ignored
    ``optimizer``              ``(losses, clip_grad_norm, clip_norm, index)``:   ignored: the module's own step
                               the module's ``max_grad_norm`` and this hook's    still runs, as torchrl's
                               place among the trainer's ``optimizer`` hooks     ``Trainer(optimizer=...)`` does
    ``post_optim_complete_log`` ``(optim_steps, average_losses)``: the module's   logged (a dict)
                               ``updates`` so far and the batch's mean losses
    ========================== ================================================ ===============================

    torchrl calls ``pre_epoch_log`` before ``pre_epoch``, ``post_loss`` before ``process_loss`` and
    ``post_epoch_log`` before ``post_epoch``; the RL loop calls them in :data:`~rl_lightning.RL_HOOKS`' order (the
    reverse), and ``post_epoch_log`` only at epochs whose losses it tracks. At the other stages both conventions are
    the same.

    Args:
        hook: a hook name, with or without the ``on_`` prefix (``"post_optim_log"`` or ``"on_post_optim_log"``).
        fn: the function; from YAML, its import path (``my_package.hooks.log_something``).
        interval: call ``fn`` on the 1st, ``interval + 1``-th, ... call of the hook; skipped calls return ``None``.
        convention: the arguments ``fn`` takes: ``"rl_lightning"`` (the hook's data arguments) or ``"torchrl"``
            (what torchrl's ``Trainer`` passes to functions given to ``register_op``).

    Example:
        >>> hook = FunctionHook("post_optim", lambda: None, interval=10)
        >>> hook.implemented_rl_hooks()
        {'on_post_optim'}
    """

    def __init__(
        self,
        hook: str,
        fn: Callable[..., Any],
        interval: int = 1,
        convention: Literal["rl_lightning", "torchrl"] = "rl_lightning",
    ) -> None:
        name = hook if hook.startswith("on_") else f"on_{hook}"
        if name not in RL_HOOKS:
            stages = ", ".join(h.removeprefix("on_") for h in RL_HOOKS)
            raise ValueError(f"hook={hook!r} is not a hook point of the RL loop; expected one of: {stages}.")
        check_int("interval", interval, hint="Use interval=1 to call fn at every hook call.")
        if not callable(fn):
            raise ValueError(f"fn={fn!r} is not callable; pass a function (from YAML: its import path).")
        check_choice("convention", convention, ("rl_lightning", "torchrl"))
        self.hook = name
        self.fn = fn
        self.interval = interval
        self.convention = convention
        self.calls = 0
        setattr(self, name, self._call)

    def _call(self, trainer: Any, module: Any, *args: Any) -> Any:
        self.calls += 1
        if (self.calls - 1) % self.interval:
            return None
        if self.convention == "torchrl" and self.hook in _TORCHRL_ARGUMENTS:
            return _TORCHRL_ARGUMENTS[self.hook](self, trainer, module, *args)
        return self.fn(*args)

    def _torchrl_pre_epoch(self, trainer: Any, module: Any, epoch: int) -> None:
        batch = module.loop.batch
        out = self.fn(batch)
        if out is not None and out is not batch:
            raise ValueError(
                f"{_name(self.fn)} returned a new batch at pre_epoch, where torchrl trains the epoch on it; the RL "
                "loop trains every epoch on the collector batch. Modify the batch in place and return it, or move the "
                "function to batch_process (once per batch) or process_optim_batch (each minibatch)."
            )

    def _torchrl_batch_log(self, trainer: Any, module: Any, *args: Any) -> Any:
        return self.fn(module.loop.batch)

    def _torchrl_post_epoch(self, trainer: Any, module: Any, epoch: int) -> None:
        self.fn()

    def _torchrl_post_loss(self, trainer: Any, module: Any, batch: TensorDictBase, losses: TensorDictBase) -> None:
        self.fn(batch)

    def _torchrl_optimizer(self, trainer: Any, module: Any, losses: TensorDictBase) -> None:
        stepping = [cb for cb in trainer.callbacks if "on_optimizer" in getattr(cb, "implemented_rl_hooks", set)()]
        index = next(i for i, cb in enumerate(stepping) if cb is self)
        max_norm = getattr(module, "max_grad_norm", None)
        self.fn(losses, max_norm is not None, max_norm, index)

    def _torchrl_post_optim_complete_log(self, trainer: Any, module: Any, losses: TensorDictBase) -> Any:
        return self.fn(module.updates, losses)

    @override
    def implemented_rl_hooks(self) -> set[str]:
        return {self.hook}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(hook=self.hook, fn=getattr(self.fn, "__qualname__", repr(self.fn)))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.calls = int(state_dict["calls"])


_TORCHRL_ARGUMENTS: dict[str, Callable[..., Any]] = {
    "on_pre_epoch": FunctionHook._torchrl_pre_epoch,
    "on_pre_epoch_log": FunctionHook._torchrl_batch_log,
    "on_post_epoch_log": FunctionHook._torchrl_batch_log,
    "on_post_epoch": FunctionHook._torchrl_post_epoch,
    "on_post_loss": FunctionHook._torchrl_post_loss,
    "on_optimizer": FunctionHook._torchrl_optimizer,
    "on_post_optim_complete_log": FunctionHook._torchrl_post_optim_complete_log,
}
"""The stages where torchrl's ``Trainer`` passes its ops other arguments than the RL hook's data arguments."""


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))

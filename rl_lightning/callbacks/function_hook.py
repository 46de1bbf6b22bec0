"""Attach a plain function to one hook point, the way torchrl's ``Trainer.register_op`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typing_extensions import override

from rl_lightning._checks import check_int
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

    Args:
        hook: a hook name, with or without the ``on_`` prefix (``"post_optim_log"`` or ``"on_post_optim_log"``).
        fn: the function; from YAML, its import path (``my_package.hooks.log_something``).
        interval: call ``fn`` on the 1st, ``interval + 1``-th, ... call of the hook; skipped calls return ``None``.

    Example:
        >>> hook = FunctionHook("post_optim", lambda: None, interval=10)
        >>> hook.implemented_rl_hooks()
        {'on_post_optim'}
    """

    def __init__(self, hook: str, fn: Callable[..., Any], interval: int = 1) -> None:
        name = hook if hook.startswith("on_") else f"on_{hook}"
        if name not in RL_HOOKS:
            stages = ", ".join(h.removeprefix("on_") for h in RL_HOOKS)
            raise ValueError(f"hook={hook!r} is not a hook point of the RL loop; expected one of: {stages}.")
        check_int("interval", interval, hint="Use interval=1 to call fn at every hook call.")
        if not callable(fn):
            raise ValueError(f"fn={fn!r} is not callable; pass a function (from YAML: its import path).")
        self.hook = name
        self.fn = fn
        self.interval = interval
        self.calls = 0
        setattr(self, name, self._call)

    def _call(self, trainer: Any, module: Any, *args: Any) -> Any:
        self.calls += 1
        if (self.calls - 1) % self.interval:
            return None
        return self.fn(*args)

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

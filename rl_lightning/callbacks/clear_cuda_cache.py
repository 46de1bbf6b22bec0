"""``ClearCudaCache``: releases PyTorch's cached CUDA memory every few updates, as torchrl's hook does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from rl_lightning._checks import check_int
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class ClearCudaCache(RLCallback):
    """Calls ``torch.cuda.empty_cache()`` after every ``interval``-th optimizer update (``on_post_optim``).

    Returns cached, unused blocks of the CUDA caching allocator to the driver, e.g. when other processes share
    the GPU or memory fragments between collection and training. Without CUDA (or before CUDA is initialized)
    ``torch.cuda.empty_cache`` does nothing, so the callback is a no-op on CPU runs.

    Args:
        interval: updates between two calls.

    Example:
        >>> hook = ClearCudaCache(interval=100)
        >>> hook.implemented_rl_hooks()
        {'on_post_optim'}
    """

    def __init__(self, interval: int) -> None:
        check_int("interval", interval, hint="It is the number of updates between two calls, e.g. 100.")
        self.interval = interval
        self.updates = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(interval=self.interval)

    @override
    def on_post_optim(self, trainer: pl.Trainer, module: RLModule) -> None:
        self.updates += 1
        if self.updates % self.interval == 0:
            torch.cuda.empty_cache()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])

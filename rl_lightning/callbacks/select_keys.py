"""``SelectKeys``: keeps only chosen entries of each collector batch, as torchrl's hook does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning.callbacks._nested_keys import NestedKey, dotted, leaf_keys, parse_key
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


def required_keys(module: pl.LightningModule) -> tuple[NestedKey, ...]:
    """The collected keys the module's algorithm reads after ``on_batch_process``: its ``batch_keys``
    (``RLModule.batch_keys``; empty, so nothing is checked, for a module that declares none)."""
    return tuple(getattr(module, "batch_keys", ()))


class SelectKeys(RLCallback):
    """Keeps only ``keys`` of each collector batch (``on_batch_process``); every later hook, the algorithm
    and a replay buffer see the selection.

    Errors come before any optimizer step: at ``setup``, if the selection drops a key the algorithm needs
    (see :func:`required_keys`); at the first batch, if a selected key is not in the batch (the message lists
    the batch's keys). The counters and episode statistics that rl_lightning logs are read before this hook,
    from the full batch.

    Args:
        keys: the entries to keep; nested keys as dotted strings (``"next.reward"``) or lists of names.

    Example:
        >>> import torch
        >>> batch = TensorDict({"observation": torch.zeros(2), "extra": torch.zeros(2)}, batch_size=[2])
        >>> list(SelectKeys(["observation"]).select(batch).keys())
        ['observation']
    """

    def __init__(self, keys: Sequence[str | Sequence[str]]) -> None:
        if isinstance(keys, str) or not keys:
            raise ValueError(
                f"keys={keys!r} is invalid: expected a non-empty list of keys, e.g. ['observation', 'next.reward']."
            )
        self.keys = [parse_key(k) for k in keys]
        self.batches = 0
        """Collector batches selected from."""

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(keys=sorted(dotted(k) for k in self.keys))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        kept = set(self.keys)
        kept_roots = {k for k in self.keys if isinstance(k, str)}  # a kept "next" keeps all of its entries
        missing = [
            dotted(k)
            for k in required_keys(pl_module)
            if k not in kept and (isinstance(k, str) or k[0] not in kept_roots)
        ]
        if missing:
            raise ValueError(
                f"SelectKeys(keys={[dotted(k) for k in self.keys]}) drops {', '.join(missing)}, which "
                f"{type(pl_module).__name__} needs to train. Add them to keys."
            )

    def select(self, batch: TensorDict) -> TensorDict:
        """The batch with only the selected keys; raises, listing the batch's keys, if one is missing."""
        missing = [dotted(k) for k in self.keys if batch.get(k, None) is None]
        if missing:
            raise ValueError(
                f"SelectKeys: {', '.join(missing)} not in the batch. Available keys: {', '.join(leaf_keys(batch))}. "
                "Select some of those (nested keys dotted, e.g. 'next.reward')."
            )
        return batch.select(*self.keys)

    @override
    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> TensorDict:
        self.batches += 1
        return self.select(batch)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])

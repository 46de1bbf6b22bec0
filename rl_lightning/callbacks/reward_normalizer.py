"""``RewardNormalizer``: rewards normalized by running statistics, as torchrl's hook does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning import keys
from rl_lightning._checks import check_finite, check_positive, check_range
from rl_lightning.callbacks.batch_sub_sampler import MASK
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class RewardNormalizer(RLCallback):
    """Normalizes the rewards of each minibatch with decayed running statistics of the collected rewards.

    - ``on_batch_process``: the sums of ``("next", "reward")`` (its valid steps where the batch has a ``"mask"``),
      of its squares and the count are summed over the DDP ranks (``trainer.strategy.reduce``) and added to the
      running sums, which decay by ``decay`` per batch; so every rank holds the same statistics. The collected
      batch itself passes on unchanged (a replay buffer stores raw rewards).
    - ``on_process_optim_batch``: the minibatch's reward becomes ``(r - mean) / std * scale + loc`` with
      ``std = sqrt(max(E[r²] - mean², eps))``, in a shallow copy (the replay buffer and the collector batch
      keep the raw rewards).

    This matters for off-policy algorithms such as SAC, whose minibatches are replay samples that the loss
    reads rewards from. PPO computes its advantages in ``prepare_batch``, before ``on_process_optim_batch``:
    its loss reads advantages and value targets, not rewards, so this callback does not change PPO's updates.

    The minibatch must be normalized after the callbacks that pick it (``ReplayBufferTrainer``,
    ``BatchSubSampler``): at ``setup`` this callback moves itself right after the last of them in
    ``trainer.callbacks`` (the RL loop calls callbacks in that order).

    Args:
        decay: factor applied to the running sums before each batch is added, in ``(0, 1]`` (1: plain averages).
        scale: the normalized rewards' scale.
        eps: floor of the variance.
        loc: the normalized rewards' offset.

    Example:
        >>> norm = RewardNormalizer(decay=1.0)
        >>> norm.update(torch.tensor([1.0, 3.0]))
        >>> norm.mean.item(), norm.std.item()
        (2.0, 1.0)
    """

    def __init__(self, decay: float = 0.999, scale: float = 1.0, eps: float = 1e-4, loc: float = 0.0) -> None:
        check_range("decay", decay, 0.0, 1.0, "Use e.g. decay=0.999 (1: plain averages).", low_inclusive=False)
        check_positive("scale", scale, "It is the scale of the normalized rewards, e.g. 1.")
        check_positive("eps", eps, "It is a small variance floor, e.g. 1e-4.")
        check_finite("loc", loc, "It is the offset of the normalized rewards, e.g. 0.")
        self.decay = decay
        self.scale = scale
        self.eps = eps
        self.loc = loc
        self.stats = torch.zeros(3, dtype=torch.float64)
        """Decayed running sums: of the rewards, of their squares, and their count."""
        self.mean = torch.zeros((), dtype=torch.float64)
        self.std = torch.ones((), dtype=torch.float64)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        callbacks = list(trainer.callbacks)  # type: ignore[attr-defined]
        pickers = [
            i
            for i, cb in enumerate(callbacks)
            if cb is not self and isinstance(cb, RLCallback) and "on_process_optim_batch" in cb.implemented_rl_hooks()
        ]
        if pickers and pickers[-1] > callbacks.index(self):
            callbacks.remove(self)
            callbacks.insert(pickers[-1], self)
            trainer.callbacks = callbacks  # type: ignore[attr-defined]  # a new list: Lightning may be iterating the old

    def update(self, reward: torch.Tensor) -> None:
        """Adds the rewards of one batch (already gathered from every rank) to the running statistics."""
        reward = reward.detach().to(torch.float64)
        self._add(torch.stack([reward.sum(), reward.pow(2).sum(), reward.new_tensor(reward.numel())]))

    def _add(self, batch_stats: torch.Tensor) -> None:
        self.stats = self.stats.to(batch_stats.device) * self.decay + batch_stats
        self._refresh()

    def _refresh(self) -> None:
        total, squares, count = self.stats.unbind()
        if count > 0:
            self.mean = total / count
            self.std = (squares / count - self.mean.pow(2)).clamp_min(self.eps).sqrt()

    @override
    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        reward = batch.get(keys.NEXT_REWARD).detach().to(torch.float64)
        mask = batch.get(MASK, None)
        if mask is not None:
            reward = reward[mask]
        local = torch.stack([reward.sum(), reward.pow(2).sum(), reward.new_tensor(reward.numel())])
        self._add(trainer.strategy.reduce(local, reduce_op="sum"))

    @override
    def on_process_optim_batch(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> TensorDict:
        return self.normalize(batch)

    def normalize(self, batch: TensorDict) -> TensorDict:
        """A shallow copy of ``batch`` with its ``("next", "reward")`` normalized."""
        reward = batch.get(keys.NEXT_REWARD)
        mean, std = self.mean.to(reward), self.std.to(reward)
        normalized = (reward - mean) / std * self.scale + self.loc
        out = batch.clone(recurse=False)
        out.set(keys.NEXT_REWARD, normalized)
        return out

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.cpu().clone()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stats = state_dict["stats"].to(torch.float64).clone()
        self._refresh()

"""Training-curve metrics: ``torchmetrics`` metrics that sync across DDP ranks when they are computed."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class EpisodeStatistics(Metric):
    """The mean return and length of the last ``window`` completed episodes of all ranks (SB3's ``ep_rew_mean``).

    Each rank keeps its own last ``window`` episodes with the time each one ended (``order``: the same clock on every
    rank, e.g. ``batch * T + t``); :meth:`compute` gathers the ranks' windows (torchmetrics' sync) and averages the
    ``window`` most recent episodes of them all. Nothing is dropped between two computes: every completed episode
    enters the window when it ends.

    Args:
        window: the number of most recent episodes averaged.

    Example:
        >>> stats = EpisodeStatistics(window=2)
        >>> stats.update(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([10, 20, 40]), torch.tensor([0, 1, 2]))
        >>> stats.compute().tolist()  # the last two: returns 2 and 4, lengths 20 and 40; 3 episodes in all
        [3.0, 30.0, 2.0]
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    returns: torch.Tensor
    lengths: torch.Tensor
    order: torch.Tensor

    def __init__(self, window: int = 100) -> None:
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"stats_window={window!r} is invalid: expected an integer >= 1, the number of most recent episodes "
                "the logged rollout/episode_return and rollout/episode_length average (100, as stable-baselines3)."
            )
        self.window = window
        # A slot whose order is -1 is empty. Syncing puts every rank's window side by side.
        self.add_state("returns", torch.zeros(window, dtype=torch.float64), dist_reduce_fx=_side_by_side)
        self.add_state("lengths", torch.zeros(window, dtype=torch.float64), dist_reduce_fx=_side_by_side)
        self.add_state("order", torch.full((window,), -1, dtype=torch.int64), dist_reduce_fx=_side_by_side)

    def update(self, returns: torch.Tensor, lengths: torch.Tensor, order: torch.Tensor) -> None:
        """Adds episodes that ended, in the order they ended (``order`` non-decreasing, after every earlier one)."""
        if returns.numel() == 0:
            return
        device = self.returns.device
        self.returns = torch.cat([self.returns, returns.to(device, torch.float64)])[-self.window :]
        self.lengths = torch.cat([self.lengths, lengths.to(device, torch.float64)])[-self.window :]
        self.order = torch.cat([self.order, order.to(device, torch.int64)])[-self.window :]

    def compute(self) -> torch.Tensor:
        """``[mean return, mean length, episodes averaged]`` of the ``window`` most recent episodes (NaN means
        when no episode has ended yet)."""
        latest = self._latest()
        if len(latest) == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.order.device)
            return torch.stack([nan, nan, torch.zeros_like(nan)])
        return torch.stack(
            [self.returns[latest].mean(), self.lengths[latest].mean(), self.returns.new_tensor(len(latest))]
        )

    def _latest(self) -> torch.Tensor:
        """The slots of the ``window`` most recent episodes, oldest first (ties: by rank, then as they were added)."""
        count = int((self.order >= 0).sum())
        return torch.sort(self.order, stable=True).indices[len(self.order) - min(self.window, count) :]

    def state_dict_window(self, sync: bool = True) -> dict[str, torch.Tensor]:
        """The ``window`` most recent episodes of all ranks (under DDP a collective: every rank must call it), or of
        this rank alone with ``sync=False``."""
        with self.sync_context(should_sync=sync):
            latest = self._latest()
            return {name: getattr(self, name)[latest].cpu() for name in ("returns", "lengths", "order")}

    def load_state_dict_window(self, state: dict[str, torch.Tensor], keep: bool = True) -> None:
        """Restores the episodes of :meth:`state_dict_window` (``keep=False``: starts empty, so that only one rank
        holds the saved episodes and no episode counts twice)."""
        self.reset()
        if keep:
            self.update(state["returns"], state["lengths"], state["order"])


def _side_by_side(gathered: torch.Tensor) -> torch.Tensor:
    """The ranks' windows, which torchmetrics' sync stacks ``[world_size, window]``, one after the other."""
    return gathered.reshape(-1)


class Moments(Metric):
    """Mean, sum, min, max and standard deviation of every value given to :meth:`update`, over all ranks.

    Example:
        >>> moments = Moments()
        >>> moments.update(torch.tensor([1.0, 2.0, 6.0]))
        >>> {k: round(v.item(), 3) for k, v in moments.compute().items()}
        {'mean': 3.0, 'sum': 9.0, 'min': 1.0, 'max': 6.0, 'std': 2.646}
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    count: torch.Tensor
    total: torch.Tensor
    squares: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        for name in ("count", "total", "squares"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("low", torch.tensor(math.inf, dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("high", torch.tensor(-math.inf, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().to(self.total.device, torch.float64).reshape(-1)
        self.count += values.numel()
        self.total += values.sum()
        self.squares += values.pow(2).sum()
        if values.numel():
            self.low = torch.minimum(self.low, values.min())
            self.high = torch.maximum(self.high, values.max())

    def compute(self) -> dict[str, torch.Tensor]:
        """``mean``, ``sum``, ``min``, ``max`` and ``std`` (with Bessel's correction; 0 for a single value)."""
        count = self.count.clamp_min(1)
        mean = self.total / count
        var = (self.squares - count * mean.pow(2)) / (count - 1).clamp_min(1)
        return {"mean": mean, "sum": self.total, "min": self.low, "max": self.high, "std": var.clamp_min(0).sqrt()}


class Means(Metric):
    """Element-wise means of equally shaped tensors (e.g. the loss terms of each update) over updates and ranks.

    Example:
        >>> means = Means(2)
        >>> means.update(torch.tensor([2.0, 6.0]), count=2)  # the sums of 2 updates
        >>> means.update(torch.tensor([1.0, 0.0]))
        >>> means.compute().tolist()
        [1.0, 2.0]
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.add_state("total", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, total: torch.Tensor, count: int = 1) -> None:
        """Adds the sum ``total`` of ``count`` tensors."""
        self.total += total.detach().to(self.total.device, torch.float64)
        self.count += count

    def compute(self) -> torch.Tensor:
        return self.total / self.count

"""``RewardNormalizer``: rewards scaled by the running standard deviation of the discounted return."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning import keys
from rl_lightning._checks import check_positive, check_range
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule


class RewardNormalizer(RLCallback):
    """Divides rewards by the running standard deviation of the discounted return, without centring them.

    What gymnasium's ``NormalizeReward`` and stable-baselines3's ``VecNormalize(norm_reward=True)`` do: each env's
    discounted return ``G_t = r_t + gamma * G_{t-1}`` (restarted with each episode) feeds running statistics, and
    every reward becomes ``r / sqrt(Var[G] + epsilon)``. A positive scale leaves the optimal policy unchanged
    (subtracting a mean would not: with terminations it changes which episodes pay, and CartPole's constant
    reward would become 0), and it is consistent for n-step returns: a sum of ``m`` discounted rewards is scaled
    by the same factor as each of them.

    - ``on_batch_process``: the returns of the collected batch update the statistics (summed over the DDP ranks,
      so every rank holds the same ones). For an on-policy algorithm (PPO) the batch's rewards are then scaled in a
      shallow copy, before the algorithm computes advantages and value targets from them.
    - ``on_process_optim_batch``: when the minibatches are replay samples (an off-policy algorithm, whose
      ``trains_on_replay`` is true), the replay buffer keeps the raw rewards and each sample's rewards are scaled
      with the current statistics instead.

    The statistics (count, mean and variance of the returns) are checkpointed; the per-env running returns are
    not: a resumed run's envs restart from a reset (``is_init``), where the returns restart too. The logged
    ``rollout/episode_return`` and the evaluations stay in the env's own reward scale.

    Args:
        gamma: discount of the returns whose deviation scales the rewards; ``None`` takes the algorithm's ``gamma``.
        epsilon: added to the variance, so that the scale stays finite.
        clip: clip the scaled rewards to ``[-clip, clip]``; ``None``: no clipping.

    Example:
        >>> norm = RewardNormalizer(gamma=0.5)
        >>> norm.update(torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[True, False, False]]))
        >>> norm.mean.item(), round(norm.var.item(), 4)  # the returns 1, 1.5, 1.75
        (1.4166666666666667, 0.0972)
    """

    def __init__(self, gamma: float | None = None, epsilon: float = 1e-8, clip: float | None = None) -> None:
        if gamma is not None:
            check_range("gamma", gamma, 0.0, 1.0, "Use the algorithm's discount, or null to take it from the model.")
        check_positive("epsilon", epsilon, "It keeps the scale finite; e.g. 1e-8.")
        if clip is not None:
            check_positive("clip", clip, "Use e.g. clip=10, or null not to clip.")
        self.gamma = gamma
        self.epsilon = epsilon
        self.clip = clip
        self.count = torch.zeros((), dtype=torch.float64)
        self.mean = torch.zeros((), dtype=torch.float64)
        self.var = torch.ones((), dtype=torch.float64)
        """Count, mean and variance of the discounted returns seen so far (all ranks)."""
        self._returns: torch.Tensor | None = None  # each env's running discounted return
        self._last_done: torch.Tensor | None = None  # whether each env's last transition ended its episode
        self._discount = gamma  # the model's when None, from setup
        self._replay = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.gamma is None:
            gamma = getattr(pl_module, "gamma", None)
            if not isinstance(gamma, float | int):
                raise ValueError(
                    f"RewardNormalizer(gamma=None) takes the model's discount, but {type(pl_module).__name__} has no "
                    "float attribute gamma. Pass RewardNormalizer(gamma=...)."
                )
            self._discount = float(gamma)
        self._replay = bool(getattr(pl_module, "trains_on_replay", False))

    @property
    def scale(self) -> torch.Tensor:
        """The factor rewards are multiplied by: ``1 / sqrt(var + epsilon)``."""
        return (self.var + self.epsilon).rsqrt()

    def update(
        self, reward: torch.Tensor, starts: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """Adds the discounted returns of a batch of rewards ``[num_envs, T, ...]`` to the statistics.

        Args:
            reward: the rewards, env first and time second.
            starts: ``[num_envs, T, ...]`` bool, whether step t starts an episode (its return restarts there).
            reduce: sums a tensor over the DDP ranks (``trainer.strategy.reduce`` with ``"sum"``); ``None``: one
                process.
        """
        if self._discount is None:
            raise ValueError(
                "RewardNormalizer(gamma=None) takes the model's discount when a fit sets it up; outside a fit pass "
                "gamma, e.g. RewardNormalizer(gamma=0.99)."
            )
        reward = reward.detach().to(torch.float64)
        starts = starts.reshape(*reward.shape[:2], -1).any(-1).reshape(*reward.shape[:2], *[1] * (reward.dim() - 2))
        running = self._returns
        if running is None or running.shape != reward[:, 0].shape:
            running = torch.zeros_like(reward[:, 0])
        returns = torch.empty_like(reward)
        keep = (~starts).to(reward.dtype) * self._discount
        for t in range(reward.shape[1]):
            running = reward[:, t] + keep[:, t] * running
            returns[:, t] = running
        self._returns = running
        local = torch.stack([returns.new_tensor(returns.numel()), returns.sum(), returns.pow(2).sum()])
        count, total, squares = (local if reduce is None else reduce(local)).unbind()
        if count == 0:
            return
        # Chan et al.'s merge of two sets' counts, means and variances (exact, in float64).
        mean = total / count
        var = (squares / count - mean.pow(2)).clamp_min(0.0)
        old_count, old_mean, old_var = self.count.to(mean), self.mean.to(mean), self.var.to(mean)
        new_count = old_count + count
        delta = mean - old_mean
        self.mean = old_mean + delta * count / new_count
        self.var = (old_var * old_count + var * count + delta.pow(2) * old_count * count / new_count) / new_count
        self.count = new_count

    @override
    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> TensorDict | None:
        done = batch.get(keys.NEXT_DONE)
        last = self._last_done
        if last is None or last.shape != done[:, -1].shape:
            last = torch.ones_like(done[:, -1])
        # A return restarts after an episode end, and where the collector reset the envs (is_init).
        starts = torch.cat([last.to(done.device).unsqueeze(1), done[:, :-1]], 1)
        is_init = batch.get(keys.IS_INIT, None)
        if is_init is not None:
            starts = starts | is_init.reshape(starts.shape)
        self._last_done = done[:, -1]
        self.update(batch.get(keys.NEXT_REWARD), starts, lambda x: trainer.strategy.reduce(x, reduce_op="sum"))
        return None if self._replay else self.normalize(batch)

    @override
    def on_process_optim_batch(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> TensorDict | None:
        return self.normalize(batch) if self._replay else None

    def normalize(self, batch: TensorDict) -> TensorDict:
        """A shallow copy of ``batch`` with its ``("next", "reward")`` scaled (and clipped, with ``clip``)."""
        reward = batch.get(keys.NEXT_REWARD)
        scaled = reward * self.scale.to(reward)
        if self.clip is not None:
            scaled = scaled.clamp(-self.clip, self.clip)
        out = batch.clone(recurse=False)
        out.set(keys.NEXT_REWARD, scaled)
        return out

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count.cpu().clone(), "mean": self.mean.cpu().clone(), "var": self.var.cpu().clone()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.count, self.mean, self.var = (state_dict[k].to(torch.float64).clone() for k in ("count", "mean", "var"))

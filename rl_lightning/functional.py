"""The math of the algorithms as small pure functions, checked against hand computations in the tests."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase


def generalized_advantage_estimate(
    reward: torch.Tensor,
    state_value: torch.Tensor,
    next_state_value: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    lmbda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(λ) over trajectories laid out ``[..., T, 1]`` (time second to last, torchrl's layout).

    The value of the next state bootstraps the TD error unless the episode terminated (a truncated
    episode still has a future); the advantage trace is cut at every episode end (``done``), where the
    next step of the batch belongs to a new episode.

    Returns:
        ``(advantage, value_target)`` with ``value_target = advantage + state_value``.

    Example:
        >>> r = torch.tensor([[1.0], [1.0]]); v = torch.zeros(2, 1); nv = torch.zeros(2, 1)
        >>> f = torch.zeros(2, 1, dtype=torch.bool)
        >>> adv, _ = generalized_advantage_estimate(r, v, nv, f, f, gamma=0.5, lmbda=1.0)
        >>> adv.squeeze(-1).tolist()
        [1.5, 1.0]
    """
    not_terminated = (~terminated).to(reward.dtype)
    not_done = (~done).to(reward.dtype)
    delta = reward + gamma * next_state_value * not_terminated - state_value
    decay = gamma * lmbda * not_done
    advantage = torch.empty_like(delta)
    running = torch.zeros_like(delta[..., 0, :])
    for t in range(delta.shape[-2] - 1, -1, -1):
        running = delta[..., t, :] + decay[..., t, :] * running
        advantage[..., t, :] = running
    return advantage, advantage + state_value


def explained_variance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - Var[target - prediction] / Var[target]``.

    1 is a perfect prediction, 0 no better than a constant; NaN when ``Var[target] = 0``.
    """
    var_target = target.var()
    explained = 1 - (target - prediction).var() / var_target
    return torch.where(var_target > 0, explained, torch.full_like(explained, float("nan")))


def loss_terms(losses: TensorDictBase) -> list[torch.Tensor]:
    """The ``loss_*`` entries of a loss TensorDict (torchrl's convention: they sum to the objective)."""
    return [losses.get(k) for k in losses.keys() if isinstance(k, str) and k.startswith("loss_")]


def total_loss(losses: TensorDictBase) -> torch.Tensor:
    """The sum of the ``loss_*`` entries."""
    return torch.stack(loss_terms(losses)).sum()

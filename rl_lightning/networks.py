"""Network building blocks: MLPs, action heads, target-network helpers (observation encoders: ``encoders.py``).

Networks take and return plain tensors: the collector calls the policy once per env step, where building
a TensorDict per call would cost more than the forward pass of a small MLP.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Activation = Literal["tanh", "relu", "elu", "gelu", "silu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def orthogonal_linear(in_features: int, out_features: int, gain: float) -> nn.Linear:
    """A linear layer with orthogonal weights (scaled by ``gain``) and zero bias, as in PPO implementations."""
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp(
    in_features: int,
    hidden_sizes: list[int],
    activation: Activation,
    out_features: int | None = None,
    out_gain: float = 1.0,
) -> nn.Sequential:
    """``Linear → activation`` per hidden size, then an optional output layer with weights scaled by ``out_gain``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is unknown; expected one of {sorted(ACTIVATIONS)}.")
    layers: list[nn.Module] = []
    size = in_features
    for hidden in hidden_sizes:
        layers += [orthogonal_linear(size, hidden, math.sqrt(2)), ACTIVATIONS[activation]()]
        size = hidden
    if out_features is not None:
        layers.append(orthogonal_linear(size, out_features, out_gain))
    return nn.Sequential(*layers)


def compile_networks(module: nn.Module) -> None:
    """``torch.compile`` every MLP (``nn.Sequential``) of ``module`` in place, for the policy and the losses alike.

    Parameter names stay as they are, so checkpoints load into compiled and eager models alike, and copies
    (target networks, weight averaging) run on their own parameters. Shapes are compiled as dynamic: the
    policy sees ``num_envs`` rows, the losses minibatches. Compilation happens on first use (seconds on a CPU,
    where it needs a C++ compiler).
    """
    for network in module.modules():
        if type(network) is nn.Sequential:
            network.__class__ = _CompiledSequential


class _CompiledSequential(nn.Sequential):
    """An ``nn.Sequential`` whose forward runs compiled.

    One compiled function takes the network as an argument (rather than ``nn.Module.compile``, which leaves
    ``Sequential`` eager with torch 2.13, or a compiled bound method, which a ``deepcopy`` would keep calling
    on the original's parameters).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _compiled_sequential_forward()(self, input)


@functools.cache
def _compiled_sequential_forward() -> Callable[..., torch.Tensor]:
    return torch.compile(nn.Sequential.forward, dynamic=True)


def forward_detached(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``network(x)`` with its linear layers' parameters detached: gradients reach ``x`` only.

    For losses that evaluate another network's output without training it (SAC's actor loss through
    the critics), in a single backward pass with the losses that do train it.
    """
    for layer in network.children():
        if isinstance(layer, nn.Linear):
            x = F.linear(x, layer.weight.detach(), layer.bias.detach() if layer.bias is not None else None)
        elif any(True for _ in layer.parameters()):
            raise ValueError(f"forward_detached supports Linear layers and parameter-free layers, not {layer}.")
        else:
            x = layer(x)
    return x


def to_env_scale(unit: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Actions in ``[-1, 1]`` mapped linearly onto a ``Box``'s bounds ``[low, high]``."""
    return low + (unit + 1.0) * 0.5 * (high - low)


def to_unit_scale(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_env_scale`: a ``Box``'s actions mapped onto ``[-1, 1]``."""
    return 2.0 * (action - low) / (high - low) - 1.0


def critic_values(critics: nn.ModuleList, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """The values ``[len(critics), B]`` of Q networks that take the features and the action concatenated."""
    inputs = torch.cat([features, action], dim=-1)
    return torch.stack([critic(inputs).squeeze(-1) for critic in critics])


def sample_categorical(log_probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of the categorical distributions ``log_probs`` ``[..., n]`` (normalized): indices ``[..., 1]``.

    ``torch.multinomial(probs, 1)``'s own algorithm (argmax of probs / Exp(1) noise): the same draws from the same
    generator state, without the validity checks that make it wait for a GPU twice per call.
    """
    probs = log_probs.exp()
    return probs.div_(torch.empty_like(probs).exponential_()).argmax(-1, keepdim=True)


class CategoricalHead(nn.Module):
    """Logits over ``n`` discrete actions, numbered from ``start`` (a ``Discrete(n, start)`` space's)."""

    def __init__(self, in_features: int, n: int, start: int = 0) -> None:
        super().__init__()
        self.logits = orthogonal_linear(in_features, n, 0.01)
        self.start = start

    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = F.log_softmax(self.logits(features), dim=-1)
        action = sample_categorical(log_probs)
        log_prob = log_probs.gather(-1, action).squeeze(-1)
        return (action.squeeze(-1) + self.start if self.start else action.squeeze(-1)), log_prob

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        action = self.logits(features).argmax(-1)
        return action + self.start if self.start else action

    def log_prob_entropy(self, features: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = F.log_softmax(self.logits(features), dim=-1)
        log_prob = log_probs.gather(-1, (action.long() - self.start).unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return log_prob, entropy


class MultiCategoricalHead(nn.Module):
    """Independent categoricals over the sub-actions of a ``MultiDiscrete`` space with ``nvec`` choices each.

    One linear layer gives the concatenated logits of all sub-actions; the log-probability and entropy of an
    action are the sums over its sub-actions. Actions are ``[B, len(nvec)]`` (int64).

    Example:
        >>> head = MultiCategoricalHead(8, [3, 2])
        >>> action, log_prob = head.sample(torch.zeros(5, 8))
        >>> action.shape, log_prob.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(self, in_features: int, nvec: list[int]) -> None:
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.logits = orthogonal_linear(in_features, sum(self.nvec), 0.01)

    def _log_probs(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [F.log_softmax(logits, dim=-1) for logits in self.logits(features).split(self.nvec, dim=-1)]

    @staticmethod
    def _summed_log_prob(log_probs: list[torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        columns = action.long().split(1, dim=-1)
        return torch.cat([lp.gather(-1, a) for lp, a in zip(log_probs, columns, strict=True)], -1).sum(-1)

    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = self._log_probs(features)
        action = torch.cat([sample_categorical(lp) for lp in log_probs], -1)
        return action, self._summed_log_prob(log_probs, action)

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([logits.argmax(-1) for logits in self.logits(features).split(self.nvec, dim=-1)], -1)

    def log_prob_entropy(self, features: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = self._log_probs(features)
        entropy = torch.stack([-(lp.exp() * lp).sum(-1) for lp in log_probs], -1).sum(-1)
        return self._summed_log_prob(log_probs, action), entropy


class BernoulliHead(nn.Module):
    """Independent Bernoulli draws over the ``n`` bits of a ``MultiBinary(n)`` space (actions ``[B, n]``, int64 0/1).

    The log-probability and entropy of an action are the sums over its bits.

    Example:
        >>> head = BernoulliHead(8, 3)
        >>> action, log_prob = head.sample(torch.zeros(5, 8))
        >>> action.shape, log_prob.shape, torch.allclose(log_prob, torch.full((5,), 3 * math.log(0.5)))
        (torch.Size([5, 3]), torch.Size([5]), True)
    """

    def __init__(self, in_features: int, n: int) -> None:
        super().__init__()
        self.logits = orthogonal_linear(in_features, n, 0.01)

    @staticmethod
    def _log_prob(logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # log sigmoid(l) for a 1, log sigmoid(-l) = log(1 - sigmoid(l)) for a 0
        return F.logsigmoid(torch.where(action.bool(), logits, -logits)).sum(-1)

    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(features)
        action = (torch.rand_like(logits) < torch.sigmoid(logits)).long()
        return action, self._log_prob(logits, action)

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        return (self.logits(features) > 0).long()

    def log_prob_entropy(self, features: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(features)
        probs = torch.sigmoid(logits)
        entropy = -(probs * F.logsigmoid(logits) + (1 - probs) * F.logsigmoid(-logits)).sum(-1)
        return self._log_prob(logits, action), entropy


class GaussianHead(nn.Module):
    """A diagonal Gaussian with a state-independent, learned log standard deviation."""

    def __init__(self, in_features: int, action_dim: int, log_std_init: float = 0.0) -> None:
        super().__init__()
        self.mean = orthogonal_linear(in_features, action_dim, 0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), log_std_init))

    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.mean(features), self.log_std.exp()
        noise = torch.randn_like(mean)
        action = mean + std * noise
        log_prob = (-0.5 * noise**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return action, log_prob

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        return self.mean(features)

    def log_prob_entropy(self, features: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(features)
        z = (action - mean) * torch.exp(-self.log_std)
        log_prob = (-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum().expand(mean.shape[:-1])
        return log_prob, entropy


class TanhGaussianHead(nn.Module):
    """A diagonal Gaussian squashed by ``tanh`` into ``[-1, 1]`` (SAC's actor), with a state-dependent std.

    ``sample`` returns the squashed action and its log-probability, corrected for the ``tanh`` change of
    variables in the numerically stable form ``2 * (log 2 - u - softplus(-2u))``.
    """

    LOG_STD_MIN = -20.0
    LOG_STD_MAX = 2.0

    def __init__(self, in_features: int, action_dim: int) -> None:
        super().__init__()
        self.params = nn.Linear(in_features, 2 * action_dim)

    def _mean_log_std(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.params(features).chunk(2, dim=-1)
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self._mean_log_std(features)
        noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        log_prob = -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob - 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))
        return torch.tanh(pre_tanh), log_prob.sum(-1)

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self._mean_log_std(features)[0])


ActionHead = CategoricalHead | MultiCategoricalHead | BernoulliHead | GaussianHead


def make_action_head(space: gym.Space, in_features: int, log_std_init: float = 0.0) -> ActionHead:
    """A categorical head for ``Discrete`` actions, independent categoricals for 1-D ``MultiDiscrete`` actions,
    independent Bernoullis for 1-D ``MultiBinary`` actions, a Gaussian head for 1-D ``Box`` actions.

    Raises:
        ValueError: for other action spaces (and ``MultiDiscrete`` ones that are multi-dimensional or start
            elsewhere than 0), naming the space and a fix.
    """
    if isinstance(space, gym.spaces.Discrete):
        return CategoricalHead(in_features, int(space.n), int(space.start))
    if isinstance(space, gym.spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise ValueError(
                f"Action space {space} has a {space.nvec.ndim}-D nvec {space.nvec.shape}; the policy supports 1-D "
                "MultiDiscrete actions. Flatten them with a gymnasium ActionWrapper whose action_space is "
                "MultiDiscrete(nvec.flatten()) and whose action() reshapes to nvec.shape."
            )
        if np.any(space.start != 0):
            raise ValueError(
                f"Action space {space} starts at {space.start.tolist()}; the policy's sub-actions start at 0. Shift "
                "them with a gymnasium ActionWrapper whose action_space is MultiDiscrete(nvec) and whose action() "
                "adds start."
            )
        return MultiCategoricalHead(in_features, space.nvec.tolist())
    if isinstance(space, gym.spaces.MultiBinary):
        if len(space.shape) != 1:
            raise ValueError(
                f"Action space {space} has shape {space.shape}; the policy supports 1-D MultiBinary actions. Flatten "
                "them with a gymnasium ActionWrapper whose action_space is MultiBinary(prod(n)) and whose action() "
                "reshapes."
            )
        return BernoulliHead(in_features, space.shape[0])
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return GaussianHead(in_features, space.shape[0], log_std_init)
    raise ValueError(
        f"Action space {space} is not supported: expected Discrete, a 1-D Box, a 1-D MultiDiscrete or a 1-D "
        "MultiBinary. For multi-dimensional Box actions, flatten them with a gymnasium wrapper."
    )


class DuelingHead(nn.Module):
    """Q-values of ``n`` discrete actions as a state value plus centred advantages (Wang et al., 2016):
    ``Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')``.

    Centring makes ``V`` and ``A`` identifiable (the mean advantage is zero), and every update of ``V`` moves the
    values of all actions together.

    Example:
        >>> head = DuelingHead(8, 3)
        >>> head(torch.zeros(5, 8)).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_features: int, n: int) -> None:
        super().__init__()
        self.value = orthogonal_linear(in_features, 1, 1.0)
        self.advantage = orthogonal_linear(in_features, n, 1.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        advantage = self.advantage(features)
        return self.value(features) + advantage - advantage.mean(-1, keepdim=True)

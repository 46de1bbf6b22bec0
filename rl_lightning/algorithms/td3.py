"""TD3 (Fujimoto et al., 2018) and DDPG (Lillicrap et al., 2016): deterministic actor-critic for ``Box`` actions.

DDPG is TD3 without its three additions (twin critics, target policy smoothing, delayed policy updates), so it is
the same code with other settings: ``class DDPG(TD3)``.
"""

from __future__ import annotations

import copy
from typing import Literal

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn

from rl_lightning import keys
from rl_lightning._checks import check_choice, check_int, check_non_negative, check_positive, hidden_sizes_or
from rl_lightning.algorithms.off_policy import OffPolicyModule
from rl_lightning.encoders import CNNSpec
from rl_lightning.networks import (
    ACTIVATIONS,
    Activation,
    compile_networks,
    critic_values,
    forward_detached,
    mlp,
    to_env_scale,
    to_unit_scale,
)
from rl_lightning.replay import NEXT_DISCOUNT, TD_ERROR, WEIGHT
from rl_lightning.spaces import SpaceLike, check_action_space


class TD3(OffPolicyModule):
    """TD3 for bounded ``Box`` action spaces: a deterministic tanh actor, twin Q critics, target copies of both.

    An update trains the critics towards the clipped double-Q target with target policy smoothing,
    ``y = r + discount * (1 - terminated) * min_i Q'_i(s', clip(pi'(s') + clip(eps, -c, c), -1, 1))``,
    ``eps ~ N(0, target_policy_noise²)``, ``c = target_noise_clip``, with ``discount = gamma ** k`` for a ``k``-step
    transition (truncated transitions bootstrap, terminated ones do not); the critic loss is
    ``mean_b(w_b * sum_i (Q_i(s, a) - y) ** 2)`` (the paper's squared error per critic; ``w`` are prioritized
    replay's importance weights, 1 without). Every ``policy_delay``-th update also trains the actor on
    ``-mean(Q_1(s, pi(s)))`` and moves the target actor and critics by ``tau``. Actions and noises are in the unit
    scale ``[-1, 1]`` the actor's tanh gives, mapped linearly to the env's bounds.

    The replay buffer, the warm-up of ``init_random_frames`` uniform random frames, the ``utd_ratio`` update schedule
    and the target updates are :class:`~rl_lightning.algorithms.off_policy.OffPolicyModule`'s; this file holds the
    networks and the loss. One backward pass and one Adam step serve the actor and the critics (a parameter group
    each): the actor's loss reaches the critics' parameters only through detached copies, and on the updates
    without it the actor's parameters get no gradient, which Adam skips (its moments and step count stay).

    ``loss_actor`` is reported on every update, so the logged mean is the actor objective's; on the updates
    between policy updates it trains nothing. Under DDP, where every parameter needs a gradient in every update,
    those updates give the actor zero gradients, which are dropped before the step: plain ``strategy: ddp`` works.

    Args:
        observation_space: the env's observation space (linked from the data by the CLI).
        action_space: the env's bounded 1-D ``Box`` action space (linked from the data by the CLI).
        lr: Adam learning rate of the actor and the critics.
        actor_lr: the actor's learning rate, if not ``lr``.
        critic_lr: the critics' learning rate, if not ``lr``.
        gamma: discount factor.
        batch_size: transitions per replay sample (one update).
        buffer_size: replay buffer capacity in transitions (per rank).
        buffer_storage: ``"memory"`` or ``"memmap"`` (memory-mapped files in ``buffer_dir``, for buffers
            larger than RAM).
        buffer_dir: directory of a memory-mapped buffer.
        observation_dtype: ``"float32"`` (store floating observations as the networks see them) or ``"float64"``
            (keep float64 observations as they are).
        prioritized: prioritized replay (proportional, by TD error) instead of uniform.
        priority_alpha: priority exponent of prioritized replay.
        priority_beta: initial importance-sampling exponent, annealed to 1.
        n_step: n-step returns stored in the buffer.
        init_random_frames: frames (all ranks) collected with uniform random actions before learning starts.
        utd_ratio: updates per collected transition (update-to-data ratio).
        tau: Polyak coefficient of the target updates (1 copies the online networks).
        policy_delay: updates per actor update and per target update (the actor and the targets move on every
            ``policy_delay``-th update, counting applied updates only).
        target_policy_noise: standard deviation of the Gaussian noise added to the target actor's actions
            (unit scale ``[-1, 1]``); 0 turns target policy smoothing off.
        target_noise_clip: the target policy noise is clipped to ``[-target_noise_clip, target_noise_clip]``.
        exploration_noise: standard deviation of the Gaussian noise added to the actor's actions when collecting
            (unit scale ``[-1, 1]``; the noisy action is clipped to the bounds); 0 collects deterministically.
        hidden_sizes: hidden layer sizes of the actor and the critics (``None``: ``[400, 300]``). ``[]``: none, the
            heads read the encoder's features.
        activation: activation of the hidden layers.
        cnn: the CNN of image observations (:class:`~rl_lightning.encoders.CNNSpec`: channels, kernel_sizes, strides,
            features, layout); ``None`` is the Nature DQN CNN. Unused without image observations.
        max_grad_norm: clip the gradient norm of the actor and of the critics each to this (``None``: no
            clipping).
        compile: ``torch.compile`` the MLPs (policy and losses); see ``benchmarks/README.md`` for its effect.
        nonfinite: an update with NaN or inf gradients stops the run with a message (``"raise"``) or is skipped
            (``"skip"``, counted in ``train/skipped_updates``).

    Example:
        >>> import gymnasium as gym
        >>> model = TD3(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2, 2, (1,)), hidden_sizes=[32])
        >>> model.act(torch.zeros(4, 3), deterministic=True)["action"].shape
        torch.Size([4, 1])
        >>> [type(target).__name__ for _, target in model.target_networks()]
        ['FlatEncoder', 'Sequential', 'ModuleList']
    """

    n_critics: int = 2
    """Critics (and target critics) trained on the same target; their minimum is the target's bootstrap value."""

    action_low: torch.Tensor
    action_high: torch.Tensor

    def __init__(
        self,
        observation_space: SpaceLike | None = None,
        action_space: SpaceLike | None = None,
        lr: float = 1e-3,
        actor_lr: float | None = None,
        critic_lr: float | None = None,
        gamma: float = 0.99,
        batch_size: int = 256,
        buffer_size: int = 1_000_000,
        buffer_storage: Literal["memory", "memmap"] = "memory",
        buffer_dir: str | None = None,
        observation_dtype: Literal["float32", "float64"] = "float32",
        prioritized: bool = False,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.4,
        n_step: int = 1,
        init_random_frames: int = 100,
        utd_ratio: float = 1.0,
        tau: float = 0.005,
        policy_delay: int = 2,
        target_policy_noise: float = 0.2,
        target_noise_clip: float = 0.5,
        exploration_noise: float = 0.1,
        hidden_sizes: list[int] | None = None,
        activation: Activation = "relu",
        cnn: CNNSpec | None = None,
        max_grad_norm: float | None = None,
        compile: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        name = type(self).__name__
        check_action_space(name, action_space, "bounded Box")
        check_positive("lr", lr, "Use e.g. 1e-3.")
        for arg, value in (("actor_lr", actor_lr), ("critic_lr", critic_lr)):
            if value is not None:
                check_positive(arg, value, "Use e.g. 1e-3, or null for lr.")
        check_int("policy_delay", policy_delay, hint="It is the number of updates per actor update, e.g. 2.")
        check_non_negative("target_policy_noise", target_policy_noise, "Use e.g. 0.2, or 0 for no smoothing.")
        check_non_negative("target_noise_clip", target_noise_clip, "Use e.g. 0.5.")
        check_non_negative("exploration_noise", exploration_noise, "Use e.g. 0.1, or 0 for no exploration noise.")
        hidden_sizes = hidden_sizes_or(hidden_sizes, [400, 300])
        check_choice("activation", activation, sorted(ACTIVATIONS))
        super().__init__(
            observation_space,
            action_space,
            gamma=gamma,
            batch_size=batch_size,
            buffer_size=buffer_size,
            buffer_storage=buffer_storage,
            buffer_dir=buffer_dir,
            observation_dtype=observation_dtype,
            prioritized=prioritized,
            priority_alpha=priority_alpha,
            priority_beta=priority_beta,
            n_step=n_step,
            init_random_frames=init_random_frames,
            utd_ratio=utd_ratio,
            tau=tau,
            target_update_interval=policy_delay,  # the targets move with the actor (TD3's delayed updates)
            max_grad_norm=max_grad_norm,
            nonfinite=nonfinite,
        )
        self.save_rl_hyperparameters()
        self.actor_lr = lr if actor_lr is None else actor_lr
        self.critic_lr = lr if critic_lr is None else critic_lr
        self.policy_delay = policy_delay
        self.target_policy_noise = target_policy_noise
        self.target_noise_clip = target_noise_clip
        self.exploration_noise = exploration_noise
        space = self.action_space
        assert isinstance(space, gym.spaces.Box)  # checked above
        action_dim = space.shape[0]
        self.register_buffer("action_low", torch.as_tensor(space.low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(space.high, dtype=torch.float32))

        self.encoder, self.target_encoder = self.make_encoders(cnn)
        features = self.encoder.out_features
        self.actor = mlp(features, hidden_sizes, activation, out_features=action_dim).append(nn.Tanh())
        self.critics = nn.ModuleList(
            [mlp(features + action_dim, hidden_sizes, activation, out_features=1) for _ in range(self.n_critics)]
        )
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        if compile:
            compile_networks(self)

    # -- networks ------------------------------------------------------------------------------

    def _to_env_scale(self, action: torch.Tensor) -> torch.Tensor:
        return to_env_scale(action, self.action_low, self.action_high)

    def _to_unit_scale(self, action: torch.Tensor) -> torch.Tensor:
        return to_unit_scale(action, self.action_low, self.action_high)

    def policy(self, observation: torch.Tensor, deterministic: bool) -> torch.Tensor:
        action = self.actor(self.encoder(observation))
        if not deterministic and self.exploration_noise > 0:
            action = (action + self.exploration_noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        return self._to_env_scale(action)

    def target_networks(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.encoder, self.target_encoder),
            (self.actor, self.target_actor),
            (self.critics, self.target_critics),
        ]

    # -- the loss --------------------------------------------------------------------------------

    @property
    def trains_actor(self) -> bool:
        """Whether the update about to run trains the actor: every ``policy_delay``-th applied update."""
        return (self.applied_updates + 1) % self.policy_delay == 0

    def loss(self, batch: TensorDict) -> TensorDict:
        features = self.encoder(batch[keys.OBSERVATION])

        with torch.no_grad():
            next_features = self.target_encoder(batch[keys.NEXT_OBSERVATION])
            next_action = self.target_actor(next_features)
            if self.target_policy_noise > 0:  # target policy smoothing
                noise = torch.randn_like(next_action) * self.target_policy_noise
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_action = (next_action + noise).clamp(-1.0, 1.0)
            next_q = critic_values(self.target_critics, next_features, next_action).min(0).values
            not_terminated = (~batch[keys.NEXT_TERMINATED]).squeeze(-1).float()
            target = batch[keys.NEXT_REWARD].squeeze(-1) + batch[NEXT_DISCOUNT].squeeze(-1) * not_terminated * next_q

        q = critic_values(self.critics, features, self._to_unit_scale(batch[keys.ACTION]))
        td_error = q - target
        squared = (td_error**2).sum(0)
        if WEIGHT in batch.keys():  # prioritized replay: importance-sampling correction
            squared = squared * batch[WEIGHT].squeeze(-1)
        loss_qvalue = squared.mean()
        if self.replay_buffer.prioritized:  # ReplayBufferTrainer turns these into priorities
            batch.set(TD_ERROR, td_error.detach().abs().mean(0))

        trains_actor = self.trains_actor
        # Under DDP every parameter must get a gradient in every update (the ranks all-reduce them in lockstep), so
        # the actor's loss is built with its graph then too, scaled to a zero gradient; on_before_optimizer_step
        # drops those zeros, so Adam leaves the actor alone between its updates either way.
        with torch.set_grad_enabled(torch.is_grad_enabled() and (trains_actor or self._distributed)):
            # The actor's gradient must not reach the critics: evaluate the first critic with detached parameters.
            inputs = torch.cat([features.detach(), self.actor(features.detach())], dim=-1)
            loss_actor = -forward_detached(self.critics[0], inputs).mean()
        if not trains_actor:  # reported (the logged mean stays the actor objective's), trains nothing
            loss_actor = loss_actor * 0.0 + loss_actor.detach() if loss_actor.requires_grad else loss_actor

        return TensorDict(
            {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue, "q_mean": q.detach().mean()}, batch_size=[]
        )

    @property
    def _distributed(self) -> bool:
        return self._trainer is not None and self._trainer.world_size > 1

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.trains_actor:  # the zero gradients DDP all-reduced: without them Adam skips the actor
            for parameter in self.actor.parameters():
                parameter.grad = None
        super().on_before_optimizer_step(optimizer)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One Adam with a parameter group (and learning rate) each for the actor and the critics: the same updates
        as two optimizers (the actor's skipped between its updates), in one fused step."""
        groups = [
            {"params": list(self.actor.parameters()), "lr": self.actor_lr},
            {"params": [*self.encoder.parameters(), *self.critics.parameters()], "lr": self.critic_lr},
        ]
        return torch.optim.Adam(groups, fused=True)


class DDPG(TD3):
    """DDPG for bounded ``Box`` action spaces: TD3 with one critic, no target policy smoothing, and the actor and
    the targets updated on every update.

    The critic trains towards ``y = r + discount * (1 - terminated) * Q'(s', pi'(s'))`` on
    ``mean_b(w_b * (Q(s, a) - y) ** 2)``, the actor on ``-mean(Q(s, pi(s)))``; collecting adds Gaussian noise
    ``exploration_noise`` (unit scale ``[-1, 1]``) to the actor's actions. See :class:`TD3` for the rest.

    Args:
        observation_space: the env's observation space (linked from the data by the CLI).
        action_space: the env's bounded 1-D ``Box`` action space (linked from the data by the CLI).
        lr: Adam learning rate of the actor and the critic.
        actor_lr: the actor's learning rate, if not ``lr``.
        critic_lr: the critic's learning rate, if not ``lr``.
        gamma: discount factor.
        batch_size: transitions per replay sample (one update).
        buffer_size: replay buffer capacity in transitions (per rank).
        buffer_storage: ``"memory"`` or ``"memmap"`` (memory-mapped files in ``buffer_dir``, for buffers
            larger than RAM).
        buffer_dir: directory of a memory-mapped buffer.
        observation_dtype: ``"float32"`` (store floating observations as the networks see them) or ``"float64"``
            (keep float64 observations as they are).
        prioritized: prioritized replay (proportional, by TD error) instead of uniform.
        priority_alpha: priority exponent of prioritized replay.
        priority_beta: initial importance-sampling exponent, annealed to 1.
        n_step: n-step returns stored in the buffer.
        init_random_frames: frames (all ranks) collected with uniform random actions before learning starts.
        utd_ratio: updates per collected transition (update-to-data ratio).
        tau: Polyak coefficient of the target updates, after every update (1 copies the online networks).
        exploration_noise: standard deviation of the Gaussian noise added to the actor's actions when collecting
            (unit scale ``[-1, 1]``; the noisy action is clipped to the bounds); 0 collects deterministically.
        hidden_sizes: hidden layer sizes of the actor and the critic (``None``: ``[400, 300]``). ``[]``: none, the
            heads read the encoder's features.
        activation: activation of the hidden layers.
        cnn: the CNN of image observations (:class:`~rl_lightning.encoders.CNNSpec`: channels, kernel_sizes, strides,
            features, layout); ``None`` is the Nature DQN CNN. Unused without image observations.
        max_grad_norm: clip the gradient norm of the actor and of the critic each to this (``None``: no clipping).
        compile: ``torch.compile`` the MLPs (policy and losses); see ``benchmarks/README.md`` for its effect.
        nonfinite: an update with NaN or inf gradients stops the run with a message (``"raise"``) or is skipped
            (``"skip"``, counted in ``train/skipped_updates``).

    Example:
        >>> import gymnasium as gym
        >>> model = DDPG(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2, 2, (1,)), hidden_sizes=[32])
        >>> model.act(torch.zeros(4, 3), deterministic=True)["action"].shape
        torch.Size([4, 1])
        >>> len(model.critics), model.policy_delay
        (1, 1)
    """

    n_critics = 1

    def __init__(
        self,
        observation_space: SpaceLike | None = None,
        action_space: SpaceLike | None = None,
        lr: float = 1e-3,
        actor_lr: float | None = None,
        critic_lr: float | None = None,
        gamma: float = 0.99,
        batch_size: int = 256,
        buffer_size: int = 1_000_000,
        buffer_storage: Literal["memory", "memmap"] = "memory",
        buffer_dir: str | None = None,
        observation_dtype: Literal["float32", "float64"] = "float32",
        prioritized: bool = False,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.4,
        n_step: int = 1,
        init_random_frames: int = 100,
        utd_ratio: float = 1.0,
        tau: float = 0.005,
        exploration_noise: float = 0.1,
        hidden_sizes: list[int] | None = None,
        activation: Activation = "relu",
        cnn: CNNSpec | None = None,
        max_grad_norm: float | None = None,
        compile: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr=lr,
            actor_lr=actor_lr,
            critic_lr=critic_lr,
            gamma=gamma,
            batch_size=batch_size,
            buffer_size=buffer_size,
            buffer_storage=buffer_storage,
            buffer_dir=buffer_dir,
            observation_dtype=observation_dtype,
            prioritized=prioritized,
            priority_alpha=priority_alpha,
            priority_beta=priority_beta,
            n_step=n_step,
            init_random_frames=init_random_frames,
            utd_ratio=utd_ratio,
            tau=tau,
            policy_delay=1,
            target_policy_noise=0.0,
            target_noise_clip=0.0,
            exploration_noise=exploration_noise,
            hidden_sizes=hidden_sizes,
            activation=activation,
            cnn=cnn,
            max_grad_norm=max_grad_norm,
            compile=compile,
            nonfinite=nonfinite,
        )

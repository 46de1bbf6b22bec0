"""Soft Actor-Critic (Haarnoja et al., 2018), with twin Q networks and automatic entropy tuning."""

from __future__ import annotations

import copy
import math
from typing import Literal

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn

from rl_lightning import keys
from rl_lightning._checks import check_choice, check_finite, check_positive, hidden_sizes_or
from rl_lightning.algorithms.off_policy import OffPolicyModule
from rl_lightning.encoders import CNNSpec
from rl_lightning.networks import (
    ACTIVATIONS,
    Activation,
    TanhGaussianHead,
    compile_networks,
    critic_values,
    forward_detached,
    mlp,
    to_env_scale,
    to_unit_scale,
)
from rl_lightning.replay import NEXT_DISCOUNT, TD_ERROR, WEIGHT
from rl_lightning.spaces import SpaceLike, check_action_space


class SAC(OffPolicyModule):
    """SAC for ``Box`` action spaces: tanh-Gaussian actor, twin Q critics with target copies, and a
    temperature tuned towards a target entropy.

    The replay buffer, the warm-up of ``init_random_frames`` uniform random frames, the ``utd_ratio`` update schedule
    and the target updates are :class:`~rl_lightning.algorithms.off_policy.OffPolicyModule`'s; this file holds the
    networks and the loss.

    One backward pass and one Adam step serve the actor, the critics and the temperature (a parameter
    group each, with its own learning rate): the actor's loss reaches the critics' parameters only through
    detached copies, and the temperature's loss only ``log_alpha``.

    Args:
        observation_space: the env's observation space (linked from the data by the CLI).
        action_space: the env's ``Box`` action space (linked from the data by the CLI).
        lr: Adam learning rate of the actor, the critics and the temperature.
        actor_lr: the actor's learning rate, if not ``lr``.
        critic_lr: the Q networks' learning rate, if not ``lr``.
        alpha_lr: the temperature's learning rate, if not ``lr``.
        gamma: discount factor.
        batch_size: transitions per replay sample (one update).
        buffer_size: replay buffer capacity in transitions (per rank).
        buffer_storage: ``"memory"`` or ``"memmap"`` (memory-mapped files in ``buffer_dir``, for buffers
            larger than RAM).
        buffer_dir: directory of a memory-mapped buffer.
        observation_dtype: ``"float32"`` (store floating observations as the networks see them: half the memory of
            MuJoCo's float64) or ``"float64"`` (keep float64 observations as they are).
        prioritized: prioritized replay (proportional, by TD error) instead of uniform.
        priority_alpha: priority exponent of prioritized replay.
        priority_beta: initial importance-sampling exponent, annealed to 1.
        n_step: n-step returns stored in the buffer.
        init_random_frames: frames (all ranks) collected with uniform random actions before learning starts.
        utd_ratio: updates per collected transition (update-to-data ratio).
        tau: Polyak coefficient of the target updates (1 copies the critics).
        target_update_interval: updates between target updates.
        init_alpha: initial temperature.
        auto_alpha: tune the temperature towards ``target_entropy``.
        target_entropy: entropy target; ``None`` gives ``-dim(A)``.
        hidden_sizes: hidden layer sizes of the actor and the Q networks. ``[]``: none, the heads read the encoder's
            features.
        activation: activation of the hidden layers.
        cnn: the CNN of image observations (:class:`~rl_lightning.encoders.CNNSpec`: channels, kernel_sizes, strides,
            features, layout); ``None`` is the Nature DQN CNN. Unused without image observations.
        max_grad_norm: clip the gradient norm of the actor, the critics and the temperature each to this
            (``None``: no clipping).
        compile: ``torch.compile`` the MLPs (policy and losses); see ``benchmarks/README.md`` for its effect.
        nonfinite: an update with NaN or inf gradients stops the run with a message (``"raise"``) or is skipped
            (``"skip"``, counted in ``train/skipped_updates``).

    Example:
        >>> import gymnasium as gym
        >>> model = SAC(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2, 2, (1,)), hidden_sizes=[32])
        >>> model.act(torch.zeros(4, 3), deterministic=True)["action"].shape
        torch.Size([4, 1])
    """

    action_low: torch.Tensor
    action_high: torch.Tensor

    def __init__(
        self,
        observation_space: SpaceLike | None = None,
        action_space: SpaceLike | None = None,
        lr: float = 3e-4,
        actor_lr: float | None = None,
        critic_lr: float | None = None,
        alpha_lr: float | None = None,
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
        init_random_frames: int = 5000,
        utd_ratio: float = 1.0,
        tau: float = 0.005,
        target_update_interval: int = 1,
        init_alpha: float = 1.0,
        auto_alpha: bool = True,
        target_entropy: float | None = None,
        hidden_sizes: list[int] | None = None,
        activation: Activation = "relu",
        cnn: CNNSpec | None = None,
        max_grad_norm: float | None = None,
        compile: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        check_action_space("SAC", action_space, "bounded Box")
        check_positive("lr", lr, "Use e.g. 3e-4.")
        for name, value in (("actor_lr", actor_lr), ("critic_lr", critic_lr), ("alpha_lr", alpha_lr)):
            if value is not None:
                check_positive(name, value, "Use e.g. 3e-4, or null for lr.")
        check_positive("init_alpha", init_alpha, "It is the initial temperature, e.g. 1.0.")
        if target_entropy is not None:
            check_finite("target_entropy", target_entropy, "Use null for -dim(A).")
        hidden_sizes = hidden_sizes_or(hidden_sizes, [256, 256])
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
            target_update_interval=target_update_interval,
            max_grad_norm=max_grad_norm,
            nonfinite=nonfinite,
        )
        self.save_rl_hyperparameters()
        self.actor_lr = lr if actor_lr is None else actor_lr
        self.critic_lr = lr if critic_lr is None else critic_lr
        self.alpha_lr = lr if alpha_lr is None else alpha_lr
        self.auto_alpha = auto_alpha
        space = self.action_space
        assert isinstance(space, gym.spaces.Box)  # checked above
        action_dim = space.shape[0]
        self.target_entropy = float(-action_dim if target_entropy is None else target_entropy)
        self.register_buffer("action_low", torch.as_tensor(space.low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(space.high, dtype=torch.float32))

        self.encoder, self.target_encoder = self.make_encoders(cnn)
        features = self.encoder.out_features
        self.actor_body = mlp(features, hidden_sizes, activation)
        self.actor_head = TanhGaussianHead(hidden_sizes[-1] if hidden_sizes else features, action_dim)
        self.critics = nn.ModuleList(
            [mlp(features + action_dim, hidden_sizes, activation, out_features=1) for _ in range(2)]
        )
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_alpha)), requires_grad=auto_alpha)
        if compile:
            compile_networks(self)

    # -- networks ------------------------------------------------------------------------------

    def _to_env_scale(self, action: torch.Tensor) -> torch.Tensor:
        return to_env_scale(action, self.action_low, self.action_high)

    def _to_unit_scale(self, action: torch.Tensor) -> torch.Tensor:
        return to_unit_scale(action, self.action_low, self.action_high)

    def policy(self, observation: torch.Tensor, deterministic: bool) -> torch.Tensor:
        features = self.actor_body(self.encoder(observation))
        unit = self.actor_head.mode(features) if deterministic else self.actor_head.sample(features)[0]
        return self._to_env_scale(unit)

    def target_networks(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.critics, self.target_critics)]

    # -- the loss --------------------------------------------------------------------------------

    def loss(self, batch: TensorDict) -> TensorDict:
        features = self.encoder(batch[keys.OBSERVATION])
        alpha = self.log_alpha.exp()

        with torch.no_grad():
            next_observation = batch[keys.NEXT_OBSERVATION]
            next_action, next_log_prob = self.actor_head.sample(self.actor_body(self.encoder(next_observation)))
            next_q = critic_values(self.target_critics, self.target_encoder(next_observation), next_action)
            next_q = next_q.min(0).values
            not_terminated = (~batch[keys.NEXT_TERMINATED]).squeeze(-1).float()
            target = batch[keys.NEXT_REWARD].squeeze(-1) + batch[NEXT_DISCOUNT].squeeze(-1) * not_terminated * (
                next_q - alpha * next_log_prob
            )

        q = critic_values(self.critics, features, self._to_unit_scale(batch[keys.ACTION]))
        td_error = q - target
        squared = 0.5 * (td_error**2).sum(0)
        if WEIGHT in batch.keys():  # prioritized replay: importance-sampling correction
            squared = squared * batch[WEIGHT].squeeze(-1)
        loss_qvalue = squared.mean()
        if self.replay_buffer.prioritized:  # ReplayBufferTrainer turns these into priorities
            batch.set(TD_ERROR, td_error.detach().abs().mean(0))

        action, log_prob = self.actor_head.sample(self.actor_body(features.detach()))
        # The actor's gradient must not reach the critics: evaluate them with detached parameters.
        q_pi = self._q_detached(features.detach(), action).min(0).values
        loss_actor = (alpha.detach() * log_prob - q_pi).mean()

        losses = {
            "loss_actor": loss_actor,
            "loss_qvalue": loss_qvalue,
            "alpha": alpha.detach(),
            "entropy": -log_prob.detach().mean(),
            "q_mean": q.detach().mean(),
        }
        if self.auto_alpha:
            losses["loss_alpha"] = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        return TensorDict(losses, batch_size=[])

    def _q_detached(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Both critics' values, with gradients flowing to the inputs but not to the critics' parameters."""
        inputs = torch.cat([features, action], dim=-1)
        return torch.stack([forward_detached(critic, inputs).squeeze(-1) for critic in self.critics])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One Adam with a parameter group (and learning rate) each for the actor, the critics and the
        temperature: the same updates as three optimizers, in one fused step."""
        groups = [
            {"params": [*self.actor_body.parameters(), *self.actor_head.parameters()], "lr": self.actor_lr},
            {"params": [*self.encoder.parameters(), *self.critics.parameters()], "lr": self.critic_lr},
        ]
        if self.auto_alpha:
            groups.append({"params": [self.log_alpha], "lr": self.alpha_lr})
        return torch.optim.Adam(groups, fused=True)

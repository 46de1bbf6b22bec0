"""Proximal Policy Optimization (Schulman et al., 2017), clipped-surrogate variant with GAE(λ)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from tensordict import TensorDict

from rl_lightning import keys
from rl_lightning._checks import check_int, check_positive
from rl_lightning.algorithms.on_policy import TRAIN_KEYS, OnPolicyModule, Optimizer
from rl_lightning.data import RLDataModule
from rl_lightning.encoders import CNNSpec
from rl_lightning.networks import Activation
from rl_lightning.spaces import SpaceLike


class PPO(OnPolicyModule):
    """PPO with a clipped surrogate objective, GAE(λ), an entropy bonus and optional value clipping.

    Each collector batch is trained for ``n_epochs`` passes of shuffled minibatches of ``batch_size`` transitions.
    The networks, GAE, observation normalization and learning-rate annealing are
    :class:`~rl_lightning.algorithms.on_policy.OnPolicyModule`'s; this file holds the minibatches and the loss.

    Args:
        observation_space: the env's observation space (linked from the data by the CLI).
        action_space: the env's action space, ``Discrete``, 1-D ``MultiDiscrete`` or ``MultiBinary``, or 1-D ``Box``
            (linked from the data by the CLI).
        lr: the optimizer's learning rate.
        anneal_lr: decay the learning rate linearly to 0 over ``total_frames``.
        optimizer: ``"adam"`` or ``"rmsprop"``.
        optimizer_eps: the optimizer's epsilon.
        gamma: discount factor.
        gae_lambda: λ of GAE; 1 gives Monte-Carlo returns, 0 one-step TD.
        n_epochs: passes over each collector batch.
        batch_size: transitions per update (minibatch); must divide the transitions of a batch on each rank.
        clip_epsilon: clip range of the probability ratio.
        clip_value: clip range of the value update around the collecting value (``None``: no clipping).
        value_coef: weight of the value loss ``0.5 * (V - target)^2``.
        entropy_coef: weight of the entropy bonus.
        normalize_advantage: normalize advantages per minibatch.
        max_grad_norm: clip the global gradient norm to this value (``None``: no clipping).
        target_kl: stop a batch's remaining epochs once an epoch's mean approximate KL exceeds this
            (agreed across ranks); ``None`` disables it.
        hidden_sizes: hidden layer sizes of the actor and critic MLPs. ``[]``: none, the heads read the encoder's
            features.
        activation: activation of the hidden layers.
        cnn: the CNN of image observations (:class:`~rl_lightning.encoders.CNNSpec`: channels, kernel_sizes, strides,
            features, layout); ``None`` is the Nature DQN CNN. Unused without image observations.
        share_network: one MLP body for actor and critic (two heads) instead of two separate MLPs.
        normalize_observations: normalize observations with running statistics (updated after each batch).
        log_std_init: initial log standard deviation of the Gaussian policy (``Box`` actions).
        compile: ``torch.compile`` the MLPs (policy and losses); see ``benchmarks/README.md`` for its effect.
        nonfinite: an update with NaN or inf gradients stops the run with a message (``"raise"``) or is skipped
            (``"skip"``, counted in ``train/skipped_updates``).

    Example:
        >>> import gymnasium as gym
        >>> model = PPO(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), hidden_sizes=[32])
        >>> sorted(model.act(torch.zeros(3, 4)))
        ['action', 'action_log_prob']
    """

    def __init__(
        self,
        observation_space: SpaceLike | None = None,
        action_space: SpaceLike | None = None,
        lr: float = 3e-4,
        anneal_lr: bool = True,
        optimizer: Optimizer = "adam",
        optimizer_eps: float = 1e-5,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        n_epochs: int = 10,
        batch_size: int = 64,
        clip_epsilon: float = 0.2,
        clip_value: float | None = None,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        normalize_advantage: bool = True,
        max_grad_norm: float | None = 0.5,
        target_kl: float | None = None,
        hidden_sizes: list[int] | None = None,
        activation: Activation = "tanh",
        cnn: CNNSpec | None = None,
        share_network: bool = False,
        normalize_observations: bool = False,
        log_std_init: float = 0.0,
        compile: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        check_int("n_epochs", n_epochs, hint="It is the number of passes over each batch, e.g. n_epochs=10.")
        check_int("batch_size", batch_size, hint="It is the transitions per update, e.g. 64.")
        check_positive("clip_epsilon", clip_epsilon)
        for name, value in (("clip_value", clip_value), ("target_kl", target_kl)):
            if value is not None:
                check_positive(name, value, "Use null to disable it.")
        super().__init__(
            observation_space,
            action_space,
            lr=lr,
            anneal_lr=anneal_lr,
            optimizer=optimizer,
            optimizer_eps=optimizer_eps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            value_coef=value_coef,
            entropy_coef=entropy_coef,
            normalize_advantage=normalize_advantage,
            max_grad_norm=max_grad_norm,
            hidden_sizes=hidden_sizes,
            activation=activation,
            cnn=cnn,
            share_network=share_network,
            normalize_observations=normalize_observations,
            log_std_init=log_std_init,
            compile=compile,
            nonfinite=nonfinite,
        )
        self.save_rl_hyperparameters()
        self.optim_epochs = n_epochs
        self.batch_size = batch_size
        self.clip_epsilon = clip_epsilon
        self.clip_value = clip_value
        self.target_kl = target_kl
        self._flat_batch: TensorDict | None = None

    def check_data(self, data: RLDataModule) -> None:
        super().check_data(data)
        transitions = data.num_envs * data.steps_per_batch
        if transitions % self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} does not split a batch of {transitions} transitions "
                f"(frames_per_batch={data.frames_per_batch} with frame_skip={data.frame_skip}) into equal "
                "minibatches. Choose a batch_size that divides it, or change frames_per_batch."
            )

    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]:
        if epoch == 0 or self._flat_batch is None:  # flatten once per collector batch, not per epoch
            self._flat_batch = batch.select(*TRAIN_KEYS).reshape(-1)
        flat = self._flat_batch
        order = torch.randperm(flat.shape[0], device=flat.device)
        for indices in order.split(self.batch_size):
            yield flat[indices]

    def loss(self, batch: TensorDict) -> TensorDict:
        log_prob, entropy, value = self.evaluate_actions(batch[keys.OBSERVATION], batch[keys.ACTION])

        advantage = batch[keys.ADVANTAGE].squeeze(-1)
        if self.normalize_advantage and advantage.numel() > 1:
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        log_ratio = log_prob - batch[keys.ACTION_LOG_PROB].reshape_as(log_prob)  # [B]: never broadcast to [B, B]
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1.0 - self.clip_epsilon, 1.0 + self.clip_epsilon)
        loss_objective = -torch.min(advantage * ratio, advantage * clipped).mean()

        target = batch[keys.VALUE_TARGET]
        value_error = (value - target) ** 2
        if self.clip_value is not None:
            old = batch[keys.STATE_VALUE]
            clipped_value = old + (value - old).clamp(-self.clip_value, self.clip_value)
            value_error = torch.max(value_error, (clipped_value - target) ** 2)
        loss_critic = 0.5 * value_error.mean()
        entropy_mean = entropy.mean()

        with torch.no_grad():
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_fraction = ((ratio - 1.0).abs() > self.clip_epsilon).float().mean()
        return TensorDict(
            {
                "loss_objective": loss_objective,
                "loss_critic": self.value_coef * loss_critic,
                "loss_entropy": -self.entropy_coef * entropy_mean,
                "entropy": entropy_mean.detach(),
                "approx_kl": approx_kl,
                "clip_fraction": clip_fraction,
            },
            batch_size=[],
        )

    @property
    def stops_optim_early(self) -> bool:
        return self.target_kl is not None

    def stop_optim_early(self, epoch_losses: TensorDict) -> bool:
        assert self.target_kl is not None
        exceeded = bool(epoch_losses["approx_kl"] > self.target_kl)
        return bool(self.trainer.strategy.reduce_boolean_decision(exceeded, all=False))

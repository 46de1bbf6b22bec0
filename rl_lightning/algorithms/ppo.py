"""Proximal Policy Optimization (Schulman et al., 2017), clipped-surrogate variant with GAE(λ)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from torch import nn

from rl_lightning import keys
from rl_lightning._checks import (
    check_choice,
    check_finite,
    check_int,
    check_non_negative,
    check_positive,
    check_range,
    hidden_sizes_or,
)
from rl_lightning.data import RLDataModule
from rl_lightning.functional import explained_variance, generalized_advantage_estimate
from rl_lightning.module import RLModule
from rl_lightning.networks import ACTIVATIONS, Activation, ObservationEncoder, compile_networks, make_action_head, mlp
from rl_lightning.spaces import SpaceLike

TRAIN_KEYS = (
    keys.OBSERVATION,
    keys.ACTION,
    keys.ACTION_LOG_PROB,
    keys.STATE_VALUE,
    keys.ADVANTAGE,
    keys.VALUE_TARGET,
)


class PPO(RLModule):
    """PPO with a clipped surrogate objective, GAE(λ), an entropy bonus and optional value clipping.

    Each collector batch is trained for ``n_epochs`` passes of shuffled minibatches of ``minibatch_size``
    transitions. Discrete actions use a categorical policy, ``Box`` actions a diagonal Gaussian.

    Args:
        observation_space: the env's observation space (linked from the data by the CLI).
        action_space: the env's action space, ``Discrete`` or 1-D ``Box`` (linked from the data by the CLI).
        lr: Adam learning rate.
        anneal_lr: decay the learning rate linearly to 0 over ``total_frames``.
        adam_eps: Adam's epsilon.
        gamma: discount factor.
        gae_lambda: λ of GAE; 1 gives Monte-Carlo returns, 0 one-step TD.
        n_epochs: passes over each collector batch.
        minibatch_size: transitions per optimizer step; must divide the transitions of a batch on each rank.
        clip_epsilon: clip range of the probability ratio.
        clip_value: clip range of the value update around the collecting value (``None``: no clipping).
        value_coef: weight of the value loss.
        entropy_coef: weight of the entropy bonus.
        normalize_advantage: normalize advantages per minibatch.
        max_grad_norm: clip the global gradient norm to this value (``None``: no clipping).
        target_kl: stop a batch's remaining epochs once an epoch's mean approximate KL exceeds this
            (agreed across ranks); ``None`` disables it.
        hidden_sizes: hidden layer sizes of the actor and critic MLPs.
        activation: activation of the hidden layers.
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

    batch_keys = (
        keys.OBSERVATION,
        keys.ACTION,
        keys.ACTION_LOG_PROB,
        keys.NEXT_OBSERVATION,
        keys.NEXT_REWARD,
        keys.NEXT_TERMINATED,
        keys.NEXT_DONE,
    )

    def __init__(
        self,
        observation_space: SpaceLike | None = None,
        action_space: SpaceLike | None = None,
        lr: float = 3e-4,
        anneal_lr: bool = True,
        adam_eps: float = 1e-5,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        n_epochs: int = 10,
        minibatch_size: int = 64,
        clip_epsilon: float = 0.2,
        clip_value: float | None = None,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        normalize_advantage: bool = True,
        max_grad_norm: float | None = 0.5,
        target_kl: float | None = None,
        hidden_sizes: list[int] | None = None,
        activation: Activation = "tanh",
        share_network: bool = False,
        normalize_observations: bool = False,
        log_std_init: float = 0.0,
        compile: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(observation_space, action_space)
        check_positive("lr", lr, "Use e.g. lr=3e-4.")
        check_positive("adam_eps", adam_eps, "It keeps Adam's step finite; use e.g. adam_eps=1e-5.")
        check_range("gamma", gamma, 0.0, 1.0)
        check_range("gae_lambda", gae_lambda, 0.0, 1.0)
        check_int("n_epochs", n_epochs, hint="It is the number of passes over each batch, e.g. n_epochs=10.")
        check_int("minibatch_size", minibatch_size, hint="It is the transitions per update, e.g. 64.")
        check_positive("clip_epsilon", clip_epsilon)
        check_non_negative("value_coef", value_coef)
        check_non_negative("entropy_coef", entropy_coef)
        for name, value in (
            ("clip_value", clip_value),
            ("max_grad_norm", max_grad_norm),
            ("target_kl", target_kl),
        ):
            if value is not None:
                check_positive(name, value, "Use null to disable it.")
        hidden_sizes = hidden_sizes_or(hidden_sizes, [64, 64])
        check_choice("activation", activation, sorted(ACTIVATIONS))
        check_finite("log_std_init", log_std_init, "It is the log of the initial action std, e.g. 0.0 (std 1).")
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        self.save_rl_hyperparameters()
        self.nonfinite = nonfinite
        self.lr = lr
        self.anneal_lr = anneal_lr
        self.adam_eps = adam_eps
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.optim_epochs = n_epochs
        self.minibatch_size = minibatch_size
        self.clip_epsilon = clip_epsilon
        self.clip_value = clip_value
        self.value_coef = value_coef
        self.entropy_coef = entropy_coef
        self.normalize_advantage = normalize_advantage
        self.max_grad_norm = max_grad_norm
        self.target_kl = target_kl
        self.share_network = share_network
        self.normalize_observations = normalize_observations
        self._flat_batch: TensorDict | None = None

        self.encoder = ObservationEncoder(self.observation_space, normalize=normalize_observations)
        features = self.encoder.out_features
        self.actor_body = mlp(features, hidden_sizes, activation)
        self.head = make_action_head(self.action_space, hidden_sizes[-1], log_std_init)
        self.critic: nn.Module
        if share_network:
            self.critic = mlp(hidden_sizes[-1], [], activation, out_features=1, out_gain=1.0)
        else:
            self.critic = mlp(features, hidden_sizes, activation, out_features=1, out_gain=1.0)
        if compile:
            compile_networks(self)

    # -- networks ----------------------------------------------------------------------------------

    def _bodies(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder(observation)
        actor = self.actor_body(x)
        return actor, actor if self.share_network else x

    def value(self, observation: torch.Tensor) -> torch.Tensor:
        """State values ``[B, 1]`` of observations ``[B, *obs_shape]``."""
        return self.critic(self._bodies(observation)[1])

    def act(self, observation: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        features = self.actor_body(self.encoder(observation.to(self.device, non_blocking=True)))
        if deterministic:
            return {keys.ACTION: self.head.mode(features).cpu()}
        action, log_prob = self.head.sample(features)
        # From a GPU: the log-prob's copy is queued, and the action's (blocking: the envs need it) waits for both.
        log_prob = log_prob.to("cpu", non_blocking=True)
        return {keys.ACTION: action.cpu(), keys.ACTION_LOG_PROB: log_prob}

    # -- the RL loop -------------------------------------------------------------------------------

    def check_data(self, data: RLDataModule) -> None:
        super().check_data(data)
        transitions = data.num_envs * data.steps_per_batch
        if transitions % self.minibatch_size:
            raise ValueError(
                f"minibatch_size={self.minibatch_size} does not split a batch of {transitions} transitions "
                f"(frames_per_batch={data.frames_per_batch} with frame_skip={data.frame_skip}) into equal "
                "minibatches. Choose a minibatch_size that divides it, or change frames_per_batch."
            )

    def prepare_batch(self, batch: TensorDict) -> TensorDict:
        """Anneals the learning rate, then writes ``state_value``, ``advantage`` and ``value_target`` (GAE)."""
        if self.anneal_lr:
            progress = (self.frames - self.data.global_frames_per_batch) / self.data.total_frames
            for group in self.optimizers().optimizer.param_groups:  # type: ignore[union-attr]
                group["lr"] = self.lr * max(1.0 - progress, 0.0)
        with torch.no_grad():
            obs = batch[keys.OBSERVATION]
            both = torch.cat([obs, batch[keys.NEXT_OBSERVATION]]).flatten(0, 1)
            values = self.value(both).reshape(2, *batch.batch_size, 1)
            advantage, value_target = generalized_advantage_estimate(
                batch[keys.NEXT_REWARD],
                values[0],
                values[1],
                batch[keys.NEXT_TERMINATED],
                batch[keys.NEXT_DONE],
                self.gamma,
                self.gae_lambda,
            )
        batch.set(keys.STATE_VALUE, values[0])
        batch.set(keys.ADVANTAGE, advantage)
        batch.set(keys.VALUE_TARGET, value_target)
        return batch

    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]:
        if epoch == 0 or self._flat_batch is None:  # flatten once per collector batch, not per epoch
            self._flat_batch = batch.select(*TRAIN_KEYS).reshape(-1)
        flat = self._flat_batch
        order = torch.randperm(flat.shape[0], device=flat.device)
        for indices in order.split(self.minibatch_size):
            yield flat[indices]

    def loss(self, batch: TensorDict) -> TensorDict:
        actor, critic = self._bodies(batch[keys.OBSERVATION])
        log_prob, entropy = self.head.log_prob_entropy(actor, batch[keys.ACTION])
        value = self.critic(critic)

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

    def on_post_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> dict[str, Any]:
        """Logs how much of the returns' variance the (pre-update) values explained."""
        ev = explained_variance(batch[keys.STATE_VALUE], batch[keys.VALUE_TARGET])
        return {"train/explained_variance": ev, "train/lr": self.optimizers().optimizer.param_groups[0]["lr"]}  # type: ignore[union-attr]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Observation statistics change only between rollouts, so a batch is trained with the same
        # normalization it was collected with (the probability ratio starts at exactly 1).
        if self.normalize_observations:
            self.encoder.update(batch[keys.OBSERVATION].to(self.device), self._sum_across_ranks)

    def _sum_across_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, eps=self.adam_eps, fused=True)

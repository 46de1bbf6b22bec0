"""``OnPolicyModule``: what the actor-critic algorithms that train on their own rollouts (PPO, A2C) share."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from torch import nn

from rl_lightning import keys
from rl_lightning._checks import (
    check_choice,
    check_finite,
    check_non_negative,
    check_positive,
    check_range,
    hidden_sizes_or,
)
from rl_lightning.callbacks import ReplayBufferTrainer, TargetNetUpdaterHook
from rl_lightning.encoders import CNNSpec, Observation, make_encoder
from rl_lightning.functional import explained_variance, generalized_advantage_estimate
from rl_lightning.module import RLModule
from rl_lightning.networks import ACTIVATIONS, Activation, compile_networks, make_action_head, mlp
from rl_lightning.spaces import SpaceLike

Optimizer = Literal["adam", "rmsprop"]

TRAIN_KEYS = (
    keys.OBSERVATION,
    keys.ACTION,
    keys.ACTION_LOG_PROB,
    keys.STATE_VALUE,
    keys.ADVANTAGE,
    keys.VALUE_TARGET,
)
"""What :meth:`OnPolicyModule.prepare_batch` leaves for the losses."""


class OnPolicyModule(RLModule):
    """Base of the actor-critic algorithms that train on the batch they just collected (PPO, A2C).

    It owns what they share:

    - **Networks.** An observation encoder shared by actor and critic (:func:`~rl_lightning.encoders.make_encoder`: a
      CNN for images, one encoder per key for ``Dict`` observations, running normalization of vectors with
      ``normalize_observations``), an actor MLP with a categorical (``Discrete``), independent categoricals
      (``MultiDiscrete``), independent Bernoullis (``MultiBinary``) or diagonal Gaussian (``Box``) head, and a critic
      MLP, or one body for both (``share_network``).
    - **Rollout preparation** (:meth:`prepare_batch`): state values of the batch's observations and next
      observations, then GAE(λ) advantages and value targets, bootstrapping from the next observation's value where
      an episode was truncated and from nothing where it terminated. ``gae_lambda=1`` gives Monte-Carlo returns
      (bootstrapped at the batch's end), and A2C's n-step returns are ``gae_lambda=1`` over ``n`` steps a batch.
    - **Learning-rate annealing** (``anneal_lr``): linear to 0 over ``total_frames``.
    - **The optimizer**: Adam or RMSprop over all parameters.

    A subclass implements :meth:`~rl_lightning.RLModule.loss` and :meth:`~rl_lightning.RLModule.optim_batches`
    (and calls :meth:`save_rl_hyperparameters`).

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space, ``Discrete``, 1-D ``MultiDiscrete``, 1-D ``MultiBinary`` or 1-D ``Box``.
        lr: the optimizer's learning rate.
        anneal_lr: decay the learning rate linearly to 0 over ``total_frames``.
        optimizer: ``"adam"`` or ``"rmsprop"``.
        optimizer_eps: the optimizer's epsilon (added to the denominator).
        gamma: discount factor.
        gae_lambda: λ of GAE; 1 gives Monte-Carlo (n-step) returns, 0 one-step TD.
        value_coef: weight of the value loss ``0.5 * (V - target)^2``.
        entropy_coef: weight of the entropy bonus.
        normalize_advantage: normalize the advantages of each update's transitions (PPO: a minibatch, A2C: the batch).
        max_grad_norm: clip the global gradient norm to this value (``None``: no clipping).
        hidden_sizes: hidden layer sizes of the actor and critic MLPs. ``[]``: none, the heads read the encoder's
            features.
        activation: activation of the hidden layers.
        cnn: the CNN of image observations (:class:`~rl_lightning.encoders.CNNSpec`: channels, kernel_sizes, strides,
            features, layout); ``None`` is the Nature DQN CNN. Unused without image observations.
        share_network: one MLP body for actor and critic (two heads) instead of two separate MLPs.
        normalize_observations: normalize observations with running statistics (updated after each batch).
        log_std_init: initial log standard deviation of the Gaussian policy (``Box`` actions).
        compile: ``torch.compile`` the MLPs.
        nonfinite: an update with NaN or inf gradients stops the run (``"raise"``) or is skipped (``"skip"``).
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
        observation_space: SpaceLike | None,
        action_space: SpaceLike | None,
        *,
        lr: float,
        anneal_lr: bool,
        optimizer: Optimizer,
        optimizer_eps: float,
        gamma: float,
        gae_lambda: float,
        value_coef: float,
        entropy_coef: float,
        normalize_advantage: bool,
        max_grad_norm: float | None,
        hidden_sizes: list[int] | None,
        activation: Activation,
        cnn: CNNSpec | None,
        share_network: bool,
        normalize_observations: bool,
        log_std_init: float,
        compile: bool,
        nonfinite: Literal["raise", "skip"],
    ) -> None:
        super().__init__(observation_space, action_space)
        check_positive("lr", lr, "Use e.g. lr=3e-4.")
        check_choice("optimizer", optimizer, ("adam", "rmsprop"))
        check_positive("optimizer_eps", optimizer_eps, "It keeps the optimizer's step finite; use e.g. 1e-5.")
        check_range("gamma", gamma, 0.0, 1.0)
        check_range("gae_lambda", gae_lambda, 0.0, 1.0)
        check_non_negative("value_coef", value_coef)
        check_non_negative("entropy_coef", entropy_coef)
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm, "Use null to disable it.")
        hidden_sizes = hidden_sizes_or(hidden_sizes, [64, 64])
        check_choice("activation", activation, sorted(ACTIVATIONS))
        check_finite("log_std_init", log_std_init, "It is the log of the initial action std, e.g. 0.0 (std 1).")
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        self.nonfinite = nonfinite
        self.lr = lr
        self.anneal_lr = anneal_lr
        self.optimizer = optimizer
        self.optimizer_eps = optimizer_eps
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.value_coef = value_coef
        self.entropy_coef = entropy_coef
        self.normalize_advantage = normalize_advantage
        self.max_grad_norm = max_grad_norm
        self.share_network = share_network
        self.normalize_observations = normalize_observations

        self.encoder = make_encoder(self.observation_space, normalize_observations, cnn)
        features = self.encoder.out_features
        self.actor_body = mlp(features, hidden_sizes, activation)
        body_features = hidden_sizes[-1] if hidden_sizes else features
        self.head = make_action_head(self.action_space, body_features, log_std_init)
        self.critic: nn.Module
        if share_network:
            self.critic = mlp(body_features, [], activation, out_features=1, out_gain=1.0)
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

    def evaluate_actions(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The policy's log-probabilities ``[B]`` and entropies ``[B]`` of ``action``, and the values ``[B, 1]``."""
        actor, critic = self._bodies(observation)
        log_prob, entropy = self.head.log_prob_entropy(actor, action)
        return log_prob, entropy, self.critic(critic)

    def deterministic_action(self, observation: torch.Tensor) -> torch.Tensor:
        """The mode of the policy: the most likely discrete action(s), the Gaussian's mean (unclipped)."""
        return self.head.mode(self.actor_body(self.encoder(observation)))

    def act(self, observation: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        features = self.actor_body(self.encoder(observation.to(self.device, non_blocking=True)))
        if deterministic:
            return {keys.ACTION: self.head.mode(features).cpu()}
        action, log_prob = self.head.sample(features)
        # From a GPU: the log-prob's copy is queued, and the action's (blocking: the envs need it) waits for both.
        log_prob = log_prob.to("cpu", non_blocking=True)
        return {keys.ACTION: action.cpu(), keys.ACTION_LOG_PROB: log_prob}

    # -- the rollout ---------------------------------------------------------------------------------

    def prepare_batch(self, batch: TensorDict) -> TensorDict:
        """Anneals the learning rate, then writes ``state_value``, ``advantage`` and ``value_target`` (GAE)."""
        if self.anneal_lr:
            progress = (self.frames - self.data.global_frames_per_batch) / self.data.total_frames
            for group in self.optimizers().optimizer.param_groups:  # type: ignore[union-attr]
                group["lr"] = self.lr * max(1.0 - progress, 0.0)
        with torch.no_grad():
            values, next_values = self._values(batch)
            advantage, value_target = generalized_advantage_estimate(
                batch[keys.NEXT_REWARD],
                values,
                next_values,
                batch[keys.NEXT_TERMINATED],
                batch[keys.NEXT_DONE],
                self.gamma,
                self.gae_lambda,
            )
        batch.set(keys.STATE_VALUE, values)
        batch.set(keys.ADVANTAGE, advantage)
        batch.set(keys.VALUE_TARGET, value_target)
        return batch

    def _values(self, batch: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        """The values ``[num_envs, T, 1]`` of the batch's observations and of its next observations.

        A next observation is, in a collector batch, the following step's observation, except where an episode ended
        (the final observation) and at the batch's last step. Only the next observations that differ from the
        following step's (compared element for element, not assumed) go through the networks again: with images, half
        the CNN passes of evaluating both.
        """
        obs, next_obs = batch[keys.OBSERVATION], batch[keys.NEXT_OBSERVATION]
        num_envs, steps = batch.batch_size
        values = self.value(obs.flatten(0, 1)).reshape(num_envs, steps, 1)
        own = torch.ones(num_envs, steps, dtype=torch.bool, device=values.device)
        own[:, :-1] = ~_equal_per_step(next_obs[:, :-1], obs[:, 1:])
        next_values = torch.empty_like(values)
        next_values[:, :-1] = values[:, 1:]
        env, t = own.nonzero(as_tuple=True)
        next_values[env, t] = self.value(next_obs[env, t])
        return values, next_values

    def on_post_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> dict[str, Any]:
        """Logs how much of the returns' variance the (pre-update) values explained, and the learning rate."""
        ev = explained_variance(batch[keys.STATE_VALUE], batch[keys.VALUE_TARGET])
        return {"train/explained_variance": ev, "train/lr": self.optimizers().optimizer.param_groups[0]["lr"]}  # type: ignore[union-attr]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Observation statistics change only between rollouts, so a batch is trained with the same
        # normalization it was collected with (PPO's probability ratio starts at exactly 1).
        if self.normalize_observations:
            self.encoder.update(batch[keys.OBSERVATION].to(self.device), self._sum_across_ranks)

    def _sum_across_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    # -- callbacks and the optimizer -------------------------------------------------------------------

    def configure_callbacks(self) -> list[pl.Callback]:
        """The base callbacks, after refusing the off-policy ones: nothing here samples a replay buffer or has target
        networks, so a ``ReplayBufferTrainer`` or ``TargetNetUpdaterHook`` in ``trainer.callbacks`` would do nothing
        the user asked for."""
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]  # set dynamically by Lightning
            if isinstance(callback, ReplayBufferTrainer | TargetNetUpdaterHook):
                raise ValueError(
                    f"trainer.callbacks lists a {type(callback).__name__}, but {type(self).__name__} trains on the "
                    "batch it just collected: it samples no replay buffer and has no target networks. Remove it, or "
                    "use an off-policy algorithm (SAC, TD3, DDPG, DQN)."
                )
        return super().configure_callbacks()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "rmsprop":
            # alpha=0.99 (the squared gradients' decay) as in stable-baselines3's A2C
            return torch.optim.RMSprop(self.parameters(), lr=self.lr, alpha=0.99, eps=self.optimizer_eps, foreach=True)
        return torch.optim.Adam(self.parameters(), lr=self.lr, eps=self.optimizer_eps, fused=True)


def _equal_per_step(a: Observation, b: Observation) -> torch.Tensor:
    """``[num_envs, T]``: whether the observations (tensors, or TensorDicts of a ``Dict`` space) are equal at each
    step."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.eq(a, b).reshape(*a.shape[:2], -1).all(-1)
    assert not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor)
    steps = [_equal_per_step(a.get(key), b.get(key)) for key in a.keys(include_nested=True, leaves_only=True)]
    return torch.stack(steps).all(0)

"""Advantage Actor-Critic (Mnih et al., 2016), the synchronous variant of stable-baselines3's A2C."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from tensordict import TensorDict

from rl_lightning import keys
from rl_lightning.algorithms.on_policy import TRAIN_KEYS, OnPolicyModule, Optimizer
from rl_lightning.encoders import CNNSpec
from rl_lightning.networks import Activation
from rl_lightning.spaces import SpaceLike


class A2C(OnPolicyModule):
    """A2C: one policy-gradient step on each collector batch, with n-step or GAE(λ) advantages and an entropy bonus.

    Every collector batch of ``num_envs`` envs x ``n`` steps is trained with a single update on all of its
    transitions. With ``gae_lambda=1`` each step's return sums the rewards up to the batch's end and bootstraps
    from the value there (the n-step returns of the paper); a truncated episode bootstraps from its final
    observation's value, a terminated one from nothing. ``gae_lambda < 1`` gives GAE(λ) advantages instead.
    The networks, the returns, observation normalization, learning-rate annealing and the optimizer are
    :class:`~rl_lightning.algorithms.on_policy.OnPolicyModule`'s; this file holds the update and the loss:

    - ``loss_objective = -mean(A * log pi(a|s))``,
    - ``loss_critic = value_coef * 0.5 * mean((V(s) - target) ** 2)``,
    - ``loss_entropy = -entropy_coef * mean(H(pi(.|s)))``.

    Args:
        observation_space: the env's observation space (linked from the data by the CLI).
        action_space: the env's action space, ``Discrete``, 1-D ``MultiDiscrete`` or ``MultiBinary``, or 1-D ``Box``
            (linked from the data by the CLI).
        lr: the optimizer's learning rate.
        anneal_lr: decay the learning rate linearly to 0 over ``total_frames``.
        optimizer: ``"rmsprop"`` (the paper's, with a squared-gradient decay of 0.99) or ``"adam"``.
        optimizer_eps: the optimizer's epsilon (stable-baselines3's ``rms_prop_eps``).
        gamma: discount factor.
        gae_lambda: λ of GAE; 1 gives the n-step returns of the paper (``n = frames_per_batch / num_envs``).
        value_coef: weight of the value loss ``0.5 * (V - target)^2`` (stable-baselines3's ``vf_coef`` is half
            of it: its value loss has no 0.5).
        entropy_coef: weight of the entropy bonus.
        normalize_advantage: normalize the advantages over the batch (mean 0, std 1).
        max_grad_norm: clip the global gradient norm to this value (``None``: no clipping).
        hidden_sizes: hidden layer sizes of the actor and critic MLPs (``None``: ``[64, 64]``). ``[]``: none, the heads
            read the encoder's features.
        activation: activation of the hidden layers.
        cnn: the CNN of image observations (:class:`~rl_lightning.encoders.CNNSpec`: channels, kernel_sizes, strides,
            features, layout); ``None`` is the Nature DQN CNN. Unused without image observations.
        share_network: one MLP body for actor and critic (two heads) instead of two separate MLPs.
        normalize_observations: normalize observations with running statistics (updated after each batch).
        log_std_init: initial log standard deviation of the Gaussian policy (``Box`` actions).
        compile: ``torch.compile`` the MLPs.
        nonfinite: an update with NaN or inf gradients stops the run with a message (``"raise"``) or is skipped
            (``"skip"``, counted in ``train/skipped_updates``).

    Example:
        >>> import gymnasium as gym
        >>> import torch
        >>> model = A2C(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), hidden_sizes=[32])
        >>> type(model.configure_optimizers()).__name__
        'RMSprop'
        >>> model.act(torch.zeros(3, 4))["action"].shape
        torch.Size([3])
    """

    def __init__(
        self,
        observation_space: SpaceLike | None = None,
        action_space: SpaceLike | None = None,
        lr: float = 7e-4,
        anneal_lr: bool = False,
        optimizer: Optimizer = "rmsprop",
        optimizer_eps: float = 1e-5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        normalize_advantage: bool = False,
        max_grad_norm: float | None = 0.5,
        hidden_sizes: list[int] | None = None,
        activation: Activation = "tanh",
        cnn: CNNSpec | None = None,
        share_network: bool = False,
        normalize_observations: bool = False,
        log_std_init: float = 0.0,
        compile: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        # Every argument is the base's, which checks them all.
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
        self.optim_epochs = 1

    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]:
        """The whole collector batch, flattened to ``[num_envs * n]``, once: one update per batch."""
        # A copy: the collector's tensors were made under inference mode, which autograd cannot save for backward
        # (PPO's minibatches are copies already, by indexing).
        yield batch.select(*TRAIN_KEYS).reshape(-1).clone()

    def loss(self, batch: TensorDict) -> TensorDict:
        log_prob, entropy, value = self.evaluate_actions(batch[keys.OBSERVATION], batch[keys.ACTION])

        advantage = batch[keys.ADVANTAGE].squeeze(-1)
        if self.normalize_advantage and advantage.numel() > 1:  # one sample has no std: it stays as it is
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        loss_objective = -(advantage * log_prob).mean()
        loss_critic = 0.5 * ((value - batch[keys.VALUE_TARGET]) ** 2).mean()
        entropy_mean = entropy.mean()
        return TensorDict(
            {
                "loss_objective": loss_objective,
                "loss_critic": self.value_coef * loss_critic,
                "loss_entropy": -self.entropy_coef * entropy_mean,
                "entropy": entropy_mean.detach(),
            },
            batch_size=[],
        )

"""Deep Q-Network (Mnih et al., 2015), with double Q-learning, dueling networks, n-step and prioritized replay."""

from __future__ import annotations

import copy
from typing import Any, Literal

import gymnasium as gym
import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from torch import nn
from torch.nn import functional as F

from rl_lightning import keys
from rl_lightning._checks import check_choice, check_int, check_positive, check_range, hidden_sizes_or
from rl_lightning.algorithms.off_policy import OffPolicyModule
from rl_lightning.encoders import CNNSpec
from rl_lightning.module import RLModule
from rl_lightning.networks import ACTIVATIONS, Activation, DuelingHead, compile_networks, mlp
from rl_lightning.replay import NEXT_DISCOUNT, TD_ERROR, WEIGHT
from rl_lightning.spaces import SpaceLike, check_action_space


class DQN(OffPolicyModule):
    """DQN for ``Discrete`` action spaces: a Q network trained towards the one-step (or n-step) bootstrapped target
    of a periodically copied target network, acting ε-greedily with ε decaying linearly over the first
    ``exploration_frames`` frames.

    The replay buffer, the warm-up of ``init_random_frames`` uniform random frames, the ``utd_ratio`` update schedule
    and the target updates are :class:`~rl_lightning.algorithms.off_policy.OffPolicyModule`'s; this file holds the
    network, the exploration and the loss. For a sampled transition ``(s, a, r, s')`` summing ``k`` rewards:

    - ``y = r + gamma**k * (1 - terminated) * Q_target(s', a*)`` with ``a* = argmax_a Q_target(s', a)``, or
      ``argmax_a Q(s', a)`` with ``double_dqn`` (van Hasselt et al., 2016); truncated transitions bootstrap.
    - ``loss_qvalue = mean(w * l(Q(s, a) - y))``, ``l`` the Huber loss with delta 1 (``0.5 x^2`` for ``|x| < 1``,
      ``|x| - 0.5`` beyond) or the squared error ``x^2``, ``w`` the importance weights of prioritized replay (1
      without). With prioritized replay the loss writes ``|Q(s, a) - y|`` into the batch as the new priorities.

    Args:
        observation_space: the env's observation space (linked from the data by the CLI).
        action_space: the env's ``Discrete`` action space (linked from the data by the CLI).
        lr: Adam learning rate.
        gamma: discount factor.
        batch_size: transitions per replay sample (one update).
        buffer_size: replay buffer capacity in transitions (per rank).
        buffer_storage: ``"memory"`` or ``"memmap"`` (memory-mapped files in ``buffer_dir``, for buffers
            larger than RAM).
        buffer_dir: directory of a memory-mapped buffer.
        observation_dtype: ``"float32"`` (store floating observations as the network sees them) or ``"float64"``
            (keep float64 observations as they are).
        prioritized: prioritized replay (proportional, by TD error) instead of uniform.
        priority_alpha: priority exponent of prioritized replay.
        priority_beta: initial importance-sampling exponent, annealed to 1.
        n_step: n-step returns stored in the buffer (the target's discount is ``gamma**k`` for ``k`` rewards).
        init_random_frames: frames (all ranks) collected with uniform random actions before learning starts.
        utd_ratio: updates per collected transition (update-to-data ratio; stable-baselines3's
            ``gradient_steps / train_freq``).
        tau: how far each target update moves the target network (1: a copy, DQN's hard update).
        target_update_interval: updates (not env frames) between target updates.
        exploration_initial_eps: ε of the ε-greedy policy at frame 0.
        exploration_final_eps: ε after ``exploration_frames`` frames.
        exploration_frames: frames (all ranks) over which ε decays linearly from the initial to the final value.
        double_dqn: the online network picks the next action and the target network evaluates it (Double DQN).
        dueling: a dueling head, ``Q = V + A - mean(A)``, instead of a linear one.
        loss: ``"huber"`` (smooth L1 with delta 1, as stable-baselines3) or ``"mse"`` (squared TD error).
        hidden_sizes: hidden layer sizes of the Q network (``None``: ``[64, 64]``). ``[]``: none, the heads read the
            encoder's features.
        activation: activation of the hidden layers.
        cnn: the CNN of image observations (:class:`~rl_lightning.encoders.CNNSpec`: channels, kernel_sizes, strides,
            features, layout); ``None`` is the Nature DQN CNN. Unused without image observations.
        max_grad_norm: clip the Q network's gradient norm to this (``None``: no clipping).
        compile: ``torch.compile`` the Q networks (policy and loss).
        nonfinite: an update with NaN or inf gradients stops the run with a message (``"raise"``) or is skipped
            (``"skip"``, counted in ``train/skipped_updates``).

    Example:
        >>> import gymnasium as gym
        >>> model = DQN(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), hidden_sizes=[32], dueling=True)
        >>> model.act(torch.zeros(3, 4), deterministic=True)["action"].shape
        torch.Size([3])
        >>> model.epsilon  # before the first frame
        1.0
    """

    def __init__(
        self,
        observation_space: SpaceLike | None = None,
        action_space: SpaceLike | None = None,
        lr: float = 1e-4,
        gamma: float = 0.99,
        batch_size: int = 32,
        buffer_size: int = 1_000_000,
        buffer_storage: Literal["memory", "memmap"] = "memory",
        buffer_dir: str | None = None,
        observation_dtype: Literal["float32", "float64"] = "float32",
        prioritized: bool = False,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.4,
        n_step: int = 1,
        init_random_frames: int = 100,
        utd_ratio: float = 0.25,
        tau: float = 1.0,
        target_update_interval: int = 2500,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        exploration_frames: int = 100_000,
        double_dqn: bool = False,
        dueling: bool = False,
        loss: Literal["huber", "mse"] = "huber",
        hidden_sizes: list[int] | None = None,
        activation: Activation = "relu",
        cnn: CNNSpec | None = None,
        max_grad_norm: float | None = 10.0,
        compile: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        check_action_space("DQN", action_space, "Discrete")
        check_positive("lr", lr, "Use e.g. 1e-4.")
        check_range("exploration_initial_eps", exploration_initial_eps, 0.0, 1.0, "It is a probability, e.g. 1.0.")
        check_range("exploration_final_eps", exploration_final_eps, 0.0, 1.0, "It is a probability, e.g. 0.05.")
        check_int("exploration_frames", exploration_frames, minimum=0, hint="Use 0 to explore at the final ε.")
        check_choice("loss", loss, ("huber", "mse"))
        hidden_sizes = hidden_sizes_or(hidden_sizes, [64, 64])
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
        self.lr = lr
        self.exploration_initial_eps = exploration_initial_eps
        self.exploration_final_eps = exploration_final_eps
        self.exploration_frames = exploration_frames
        self.double_dqn = double_dqn
        self.huber = loss == "huber"
        space = self.action_space
        assert isinstance(space, gym.spaces.Discrete)  # checked above
        self.action_start = int(space.start)

        self.encoder, self.target_encoder = self.make_encoders(cnn)
        n = int(space.n)
        if dueling:
            body = mlp(self.encoder.out_features, hidden_sizes, activation)
            self.q_network = nn.Sequential(
                *body, DuelingHead(hidden_sizes[-1] if hidden_sizes else self.encoder.out_features, n)
            )
        else:
            self.q_network = mlp(self.encoder.out_features, hidden_sizes, activation, out_features=n)
        self.target_q_network = copy.deepcopy(self.q_network).requires_grad_(False)
        if compile:
            compile_networks(self)

    # -- acting ----------------------------------------------------------------------------------

    @property
    def epsilon(self) -> float:
        """The exploration rate at the current ``frames``: linear from ``exploration_initial_eps`` at frame 0 to
        ``exploration_final_eps`` at ``exploration_frames``, and final after."""
        done = 1.0 if self.exploration_frames == 0 else min(self.frames / self.exploration_frames, 1.0)
        return self.exploration_initial_eps + done * (self.exploration_final_eps - self.exploration_initial_eps)

    def policy(self, observation: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """The greedy actions; without ``deterministic``, each env's is replaced by a uniform one with
        probability :attr:`epsilon`."""
        action = self.q_network(self.encoder(observation)).argmax(-1) + self.action_start
        if deterministic:
            return action
        explore = torch.rand(action.shape, device=action.device) < self.epsilon
        return torch.where(explore, self.random_action(action.shape[0]), action)

    def target_networks(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.q_network, self.target_q_network)]

    # -- the loss --------------------------------------------------------------------------------

    def loss(self, batch: TensorDict) -> TensorDict:
        q_values = self.q_network(self.encoder(batch[keys.OBSERVATION]))
        action = batch[keys.ACTION].long().reshape(-1, 1) - self.action_start
        q = q_values.gather(-1, action).squeeze(-1)

        with torch.no_grad():
            next_q_values = self.target_q_network(self.target_encoder(batch[keys.NEXT_OBSERVATION]))
            # Double DQN: the online network picks the action, the target network evaluates it.
            chooser = self.q_network(self.encoder(batch[keys.NEXT_OBSERVATION])) if self.double_dqn else next_q_values
            next_q = next_q_values.gather(-1, chooser.argmax(-1, keepdim=True)).squeeze(-1)
            not_terminated = (~batch[keys.NEXT_TERMINATED]).squeeze(-1).float()
            target = batch[keys.NEXT_REWARD].squeeze(-1) + batch[NEXT_DISCOUNT].squeeze(-1) * not_terminated * next_q

        if self.huber:
            per_sample = F.smooth_l1_loss(q, target, reduction="none", beta=1.0)
        else:
            per_sample = F.mse_loss(q, target, reduction="none")
        if WEIGHT in batch.keys():  # prioritized replay: importance-sampling correction
            per_sample = per_sample * batch[WEIGHT].squeeze(-1)
        if self.replay_buffer.prioritized:  # ReplayBufferTrainer turns these into priorities
            batch.set(TD_ERROR, (q.detach() - target).abs())
        return TensorDict({"loss_qvalue": per_sample.mean(), "q_mean": q.detach().mean()}, batch_size=[])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([*self.encoder.parameters(), *self.q_network.parameters()], lr=self.lr, fused=True)

    # -- logging ---------------------------------------------------------------------------------

    def on_post_steps_log(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> dict[str, Any]:
        """Logs ``train/epsilon``, the exploration rate the next batch is collected with."""
        return {"train/epsilon": self.epsilon}

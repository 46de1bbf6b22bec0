"""Soft Actor-Critic (Haarnoja et al., 2018), with twin Q networks and automatic entropy tuning."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any, Literal

import gymnasium as gym
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
from rl_lightning.callbacks import ReplayBufferTrainer, TargetNetUpdaterHook, UTDRHook
from rl_lightning.callbacks.replay_buffer_trainer import TD_ERROR
from rl_lightning.data import RLDataModule
from rl_lightning.module import RLModule
from rl_lightning.networks import (
    ACTIVATIONS,
    Activation,
    ObservationEncoder,
    TanhGaussianHead,
    compile_networks,
    forward_detached,
    mlp,
)
from rl_lightning.replay import PRIORITY_EPS, TRANSITION_KEYS, ReplayBuffer, max_priority_alpha
from rl_lightning.spaces import SpaceLike

DISCOUNT = ("next", "discount")
"""Written by the replay buffer: ``gamma ** k`` for a ``k``-step transition."""


class SAC(RLModule):
    """SAC for ``Box`` action spaces: tanh-Gaussian actor, twin Q critics with target copies, and a
    temperature tuned towards a target entropy.

    Each collector batch is added to a replay buffer; then ``utd_ratio`` optimizer steps per collected
    transition each train on a replay sample of ``batch_size``. The first ``init_random_frames`` frames are
    collected with uniform random actions and no updates. The replay buffer, the target-network updates
    and the UTD logging are the callbacks ``ReplayBufferTrainer``, ``TargetNetUpdaterHook`` and
    ``UTDRHook``, which this module adds to the trainer (``configure_callbacks``) from its arguments.

    One backward pass and one Adam step serve the actor, the critics and the temperature (a parameter
    group each, with its own learning rate): the actor's loss reaches the critics' parameters only through
    detached copies, and the temperature's loss only ``log_alpha``.

    Args:
        observation_space: the env's observation space (linked from the data by the CLI).
        action_space: the env's ``Box`` action space (linked from the data by the CLI).
        actor_lr: Adam learning rate of the actor.
        critic_lr: Adam learning rate of the Q networks.
        alpha_lr: Adam learning rate of the temperature.
        gamma: discount factor.
        batch_size: transitions per replay sample (one optimizer step).
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
        utd_ratio: optimizer updates per collected transition (update-to-data ratio).
        target_update: ``"soft"`` (Polyak averaging with ``tau``) or ``"hard"`` (copy every
            ``target_update_interval`` updates).
        tau: Polyak coefficient of soft target updates.
        target_update_interval: updates between hard target copies.
        init_alpha: initial temperature.
        auto_alpha: tune the temperature towards ``target_entropy``.
        target_entropy: entropy target; ``None`` gives ``-dim(A)``.
        hidden_sizes: hidden layer sizes of the actor and the Q networks.
        activation: activation of the hidden layers.
        max_grad_norm: clip the gradient norm of the actor, the critics and the temperature each to this
            (``None``: no clipping).
        compile: ``torch.compile`` the MLPs (policy and losses); see ``benchmarks/README.md`` for its effect.
        nonfinite: an update with NaN or inf gradients stops the run with a message (``"raise"``) or is skipped
            (``"skip"``, counted in ``train/skipped_updates``).

    Example:
        >>> model = SAC(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2, 2, (1,)), hidden_sizes=[32])
        >>> model.act(torch.zeros(4, 3), deterministic=True)["action"].shape
        torch.Size([4, 1])
    """

    action_low: torch.Tensor
    action_high: torch.Tensor

    batch_keys = (*TRANSITION_KEYS, keys.IS_INIT)  # what the replay buffer stores, and where episodes restart

    def __init__(
        self,
        observation_space: SpaceLike | None = None,
        action_space: SpaceLike | None = None,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
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
        target_update: Literal["soft", "hard"] = "soft",
        tau: float = 0.005,
        target_update_interval: int = 1000,
        init_alpha: float = 1.0,
        auto_alpha: bool = True,
        target_entropy: float | None = None,
        hidden_sizes: list[int] | None = None,
        activation: Activation = "relu",
        max_grad_norm: float | None = None,
        compile: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(observation_space, action_space)
        space = self.action_space
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.is_bounded()):
            raise ValueError(
                f"SAC needs a bounded 1-D Box action space; the env has {space}. For discrete actions use "
                "rl_lightning.PPO; for unbounded Box actions add gymnasium.wrappers.ClipAction or RescaleAction."
            )
        for name, value in (("actor_lr", actor_lr), ("critic_lr", critic_lr), ("alpha_lr", alpha_lr)):
            check_positive(name, value, "Use e.g. 3e-4.")
        check_range("gamma", gamma, 0.0, 1.0)
        check_int("batch_size", batch_size, hint="It is the transitions per replay sample, e.g. 256.")
        check_int("buffer_size", buffer_size, hint="It is the replay capacity in transitions, e.g. 1_000_000.")
        check_choice("buffer_storage", buffer_storage, ("memory", "memmap"))
        if buffer_storage == "memmap" and buffer_dir is None:
            raise ValueError(
                "buffer_storage='memmap' needs buffer_dir, the directory of the memory-mapped buffer files: pass "
                "buffer_dir='path/to/dir', or use buffer_storage='memory'."
            )
        if buffer_storage == "memory" and buffer_dir is not None:
            raise ValueError(
                f"buffer_dir={buffer_dir!r} is only used with buffer_storage='memmap' (the buffer would stay in RAM "
                "and the directory would never be written). Set buffer_storage='memmap', or drop buffer_dir."
            )
        check_non_negative("priority_alpha", priority_alpha, "0 samples uniformly, 0.6 is the paper's.")
        if prioritized and priority_alpha > max_priority_alpha(PRIORITY_EPS):
            raise ValueError(
                f"priority_alpha={priority_alpha!r} is invalid: expected a value <= "
                f"{max_priority_alpha(PRIORITY_EPS):.2f} (larger exponents make the smallest priority underflow "
                "float32, so some transitions could never be sampled). 0.6 is the paper's."
            )
        check_range("priority_beta", priority_beta, 0.0, 1.0, "It anneals to 1; 0.4 is the paper's.")
        check_positive("init_alpha", init_alpha, "It is the initial temperature, e.g. 1.0.")
        check_positive("utd_ratio", utd_ratio, "It is the number of updates per collected transition, e.g. 1.")
        check_int("init_random_frames", init_random_frames, minimum=0, hint="Use 0 to learn from the first batch.")
        check_choice("target_update", target_update, ("soft", "hard"))
        check_int("target_update_interval", target_update_interval, hint="It is the updates between hard copies.")
        if target_entropy is not None:
            check_finite("target_entropy", target_entropy, "Use null for -dim(A).")
        if batch_size > buffer_size:
            raise ValueError(
                f"buffer_size={buffer_size} is smaller than batch_size={batch_size}: a sample could never be drawn. "
                "Raise buffer_size or lower batch_size."
            )
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm, "Use null to disable it.")
        hidden_sizes = hidden_sizes_or(hidden_sizes, [256, 256])
        check_choice("activation", activation, sorted(ACTIVATIONS))
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        self.save_rl_hyperparameters()
        self.nonfinite = nonfinite
        self.actor_lr, self.critic_lr, self.alpha_lr = actor_lr, critic_lr, alpha_lr
        self.gamma = gamma
        self.batch_size = batch_size
        self.init_random_frames = init_random_frames
        self.utd_ratio = utd_ratio
        self.learning_transitions: int | None = 0
        """Transitions this rank collected with the policy (after ``init_random_frames``): ``utd_ratio`` times
        it is the updates due. ``None`` until a checkpoint written before this counter is first used."""
        self.auto_alpha = auto_alpha
        self.max_grad_norm = max_grad_norm
        action_dim = space.shape[0]
        self.target_entropy = float(-action_dim if target_entropy is None else target_entropy)
        self.register_buffer("action_low", torch.as_tensor(space.low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(space.high, dtype=torch.float32))

        # The target updater and (at the end) the buffer are built here, so bad values fail before any training.
        self.target_updater = TargetNetUpdaterHook(target_update, tau, target_update_interval)

        self.encoder = ObservationEncoder(self.observation_space)
        features = self.encoder.out_features
        self.actor_body = mlp(features, hidden_sizes, activation)
        self.actor_head = TanhGaussianHead(hidden_sizes[-1], action_dim)
        self.critics = nn.ModuleList(
            [mlp(features + action_dim, hidden_sizes, activation, out_features=1) for _ in range(2)]
        )
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_alpha)), requires_grad=auto_alpha)
        if compile:
            compile_networks(self)
        # Last: a memory-mapped buffer creates its directory, once every other value has been checked.
        self.replay_buffer = ReplayBuffer(
            buffer_size,
            storage=buffer_storage,
            scratch_dir=buffer_dir,
            prioritized=prioritized,
            alpha=priority_alpha,
            beta=priority_beta,
            n_step=n_step,
            gamma=gamma,
            observation_dtype=observation_dtype,
        )

    # -- networks ------------------------------------------------------------------------------

    def _to_env_scale(self, action: torch.Tensor) -> torch.Tensor:
        return self.action_low + (action + 1.0) * 0.5 * (self.action_high - self.action_low)

    def _to_unit_scale(self, action: torch.Tensor) -> torch.Tensor:
        return 2.0 * (action - self.action_low) / (self.action_high - self.action_low) - 1.0

    @staticmethod
    def _q(critics: nn.ModuleList, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Both critics' values ``[2, B]``."""
        inputs = torch.cat([features, action], dim=-1)
        return torch.stack([critic(inputs).squeeze(-1) for critic in critics])

    def act(self, observation: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        observation = observation.to(self.device, non_blocking=True)  # from pinned memory: asynchronous
        if not deterministic and self.frames < self.init_random_frames:
            unit = torch.rand((observation.shape[0], *self.action_low.shape), device=self.device) * 2 - 1
            return {keys.ACTION: self._to_env_scale(unit).cpu()}
        features = self.actor_body(self.encoder(observation))
        unit = self.actor_head.mode(features) if deterministic else self.actor_head.sample(features)[0]
        return {keys.ACTION: self._to_env_scale(unit).cpu()}

    def target_networks(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.critics, self.target_critics)]

    # -- the RL loop -----------------------------------------------------------------------------

    def configure_callbacks(self) -> list[pl.Callback]:
        return [
            *super().configure_callbacks(),
            ReplayBufferTrainer(self.replay_buffer, self.batch_size),
            self.target_updater,
            UTDRHook(),
        ]

    def check_data(self, data: RLDataModule) -> None:
        super().check_data(data)
        if self.init_random_frames > data.total_frames:
            raise ValueError(
                f"init_random_frames={self.init_random_frames} exceeds total_frames={data.total_frames}: the run "
                "would end before learning starts. Lower init_random_frames or raise total_frames."
            )

        random_batches = math.ceil(self.init_random_frames / data.global_frames_per_batch)
        stored = (random_batches + 1) * data.num_envs * data.steps_per_batch
        stored -= data.num_envs * (self.replay_buffer.n_step - 1)  # n-step windows still open
        if stored < self.batch_size:
            raise ValueError(
                f"The replay buffer would hold {stored} transitions at the first update (init_random_frames="
                f"{self.init_random_frames}, frames_per_batch={data.frames_per_batch}), fewer than batch_size="
                f"{self.batch_size}. Raise init_random_frames to at least {self.batch_size * data.world_size} "
                "or lower batch_size."
            )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not any(isinstance(cb, ReplayBufferTrainer) for cb in self.trainer.callbacks):  # type: ignore[attr-defined]
            raise RuntimeError("SAC trains on replay samples, but no ReplayBufferTrainer callback is attached.")

    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]:
        """``utd_ratio`` steps per collected transition once learning started; each step's minibatch is the
        replay sample that ``ReplayBufferTrainer`` puts in place of the batch.

        A batch collected after the first ``init_random_frames`` frames (by the policy, not at random) counts its
        transitions into :attr:`learning_transitions`; the steps due are derived from that counter and
        ``updates``, both checkpointed and the same on every rank, so they match on every rank and after a
        resume, with the same number of ranks or another.
        """
        if self.learning_transitions is None:  # a checkpoint from before the counter: it took every update due
            self.learning_transitions = math.ceil(self.updates / self.utd_ratio)
        if epoch == 0 and self.frames - self.data.global_frames_per_batch >= self.init_random_frames:
            self.learning_transitions += batch.numel()
        steps = math.floor(self.utd_ratio * self.learning_transitions) - self.updates
        for _ in range(max(steps, 0)):
            yield batch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rl_lightning"]["learning_transitions"] = self.learning_transitions

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.learning_transitions = checkpoint["rl_lightning"].get("learning_transitions")

    def loss(self, batch: TensorDict) -> TensorDict:
        features = self.encoder(batch[keys.OBSERVATION])
        next_features = self.encoder(batch[keys.NEXT_OBSERVATION])
        alpha = self.log_alpha.exp()

        with torch.no_grad():
            next_action, next_log_prob = self.actor_head.sample(self.actor_body(next_features))
            next_q = self._q(self.target_critics, next_features, next_action).min(0).values
            not_terminated = (~batch[keys.NEXT_TERMINATED]).squeeze(-1).float()
            target = batch[keys.NEXT_REWARD].squeeze(-1) + batch[DISCOUNT].squeeze(-1) * not_terminated * (
                next_q - alpha * next_log_prob
            )

        q = self._q(self.critics, features, self._to_unit_scale(batch[keys.ACTION]))
        td_error = q - target
        squared = 0.5 * (td_error**2).sum(0)
        if "weight" in batch.keys():  # prioritized replay: importance-sampling correction
            squared = squared * batch["weight"].squeeze(-1)
        loss_qvalue = squared.mean()
        if self.replay_buffer.prioritized:  # ReplayBufferTrainer turns these into priorities
            batch.set(TD_ERROR, td_error.detach().abs().mean(0))

        action, log_prob = self.actor_head.sample(self.actor_body(features))
        # The actor's gradient must not reach the critics: evaluate them with detached parameters.
        q_pi = self._q_detached(features, action).min(0).values
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
            {"params": list(self.critics.parameters()), "lr": self.critic_lr},
        ]
        if self.auto_alpha:
            groups.append({"params": [self.log_alpha], "lr": self.alpha_lr})
        return torch.optim.Adam(groups, fused=True)

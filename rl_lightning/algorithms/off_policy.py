"""``OffPolicyModule``: what the replay-based algorithms (SAC, TD3, DDPG, DQN) share."""

from __future__ import annotations

import copy
import math
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, Literal

import gymnasium as gym
import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from torch import nn

from rl_lightning import keys
from rl_lightning._checks import check_choice, check_int, check_non_negative, check_positive, check_range
from rl_lightning.callbacks import ReplayBufferTrainer, TargetNetUpdaterHook, UTDRHook
from rl_lightning.data import RLDataModule
from rl_lightning.encoders import CNNSpec, Encoder, make_encoder
from rl_lightning.module import RLModule
from rl_lightning.networks import to_env_scale
from rl_lightning.replay import PRIORITY_EPS, TRANSITION_KEYS, ReplayBuffer, max_priority_alpha
from rl_lightning.spaces import SpaceLike


class OffPolicyModule(RLModule):
    """Base of the algorithms that train on replay samples: the buffer, the warm-up, the update schedule and the
    target networks. A subclass builds its networks and implements :meth:`policy`, :meth:`loss`,
    :meth:`target_networks` and ``configure_optimizers``.

    - **Replay buffer.** :attr:`replay_buffer` (uniform or prioritized, in memory or memory-mapped, n-step) is built
      from the arguments. :class:`~rl_lightning.callbacks.ReplayBufferTrainer` adds every collected batch to it,
      turns the per-sample TD errors a loss writes (``"td_error"``) into priorities, and checkpoints its contents.
    - **Warm-up.** The first ``init_random_frames`` frames (all ranks) are collected with :meth:`random_action`
      (uniform over the action space unless a subclass says otherwise) and train nothing.
    - **Update schedule.** After the warm-up, each collected transition makes ``utd_ratio`` updates due; each update
      trains on a fresh replay sample of ``batch_size`` transitions (:meth:`optim_batches`). The count of
      transitions behind the schedule is checkpointed, so a resumed run, on any number of ranks, makes the updates
      the uninterrupted run would have.
    - **Target networks.** :class:`~rl_lightning.callbacks.TargetNetUpdaterHook` moves each pair of
      :meth:`target_networks` by ``tau`` every ``target_update_interval`` updates (``tau=1``: a copy); updates
      skipped with ``nonfinite: skip`` do not count.
    - **Callbacks.** The three callbacks above, and :class:`~rl_lightning.callbacks.UTDRHook`, are added to the
      trainer (:meth:`configure_callbacks`). One the user lists in ``trainer.callbacks`` is used instead when it
      does what the model's arguments say (the model's own buffer; the same ``tau`` and interval), and refused with
      a message otherwise.

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space.
        gamma: discount factor.
        batch_size: transitions per replay sample (one update).
        buffer_size: replay buffer capacity in transitions (per rank).
        buffer_storage: ``"memory"`` or ``"memmap"`` (memory-mapped files in ``buffer_dir``).
        buffer_dir: directory of a memory-mapped buffer.
        observation_dtype: the dtype floating observations are stored as (``"float32"`` or ``"float64"``).
        prioritized: prioritized replay (proportional, by TD error) instead of uniform.
        priority_alpha: priority exponent of prioritized replay.
        priority_beta: initial importance-sampling exponent, annealed to 1.
        n_step: rewards summed into each stored transition (n-step returns).
        init_random_frames: frames (all ranks) collected with random actions before learning starts.
        utd_ratio: updates per collected transition (update-to-data ratio).
        tau: how far each target update moves the targets towards the online networks (1: a copy).
        target_update_interval: updates between target updates.
        max_grad_norm: clip the gradient norm of each parameter group to this (``None``: no clipping).
        nonfinite: an update with NaN or inf gradients stops the run (``"raise"``) or is skipped (``"skip"``).
    """

    trains_on_replay = True
    batch_keys = (*TRANSITION_KEYS, keys.IS_INIT)  # what the replay buffer stores, and where episodes restart

    def __init__(
        self,
        observation_space: SpaceLike | None,
        action_space: SpaceLike | None,
        *,
        gamma: float,
        batch_size: int,
        buffer_size: int,
        buffer_storage: Literal["memory", "memmap"],
        buffer_dir: str | None,
        observation_dtype: Literal["float32", "float64"],
        prioritized: bool,
        priority_alpha: float,
        priority_beta: float,
        n_step: int,
        init_random_frames: int,
        utd_ratio: float,
        tau: float,
        target_update_interval: int,
        max_grad_norm: float | None,
        nonfinite: Literal["raise", "skip"],
    ) -> None:
        super().__init__(observation_space, action_space)
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
        check_positive("utd_ratio", utd_ratio, "It is the number of updates per collected transition, e.g. 1.")
        check_int("init_random_frames", init_random_frames, minimum=0, hint="Use 0 to learn from the first batch.")
        if batch_size > buffer_size:
            raise ValueError(
                f"buffer_size={buffer_size} is smaller than batch_size={batch_size}: a sample could never be drawn. "
                "Raise buffer_size or lower batch_size."
            )
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm, "Use null to disable it.")
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        check_range("tau", tau, 0.0, 1.0, "Use e.g. tau=0.005, or 1 to copy the online networks.", low_inclusive=False)
        check_int("target_update_interval", target_update_interval, hint="It is the updates between target updates.")
        self.target_updater = TargetNetUpdaterHook(tau, target_update_interval)
        self.nonfinite = nonfinite
        self.gamma = gamma
        self.batch_size = batch_size
        self.init_random_frames = init_random_frames
        self.utd_ratio = utd_ratio
        self.max_grad_norm = max_grad_norm
        self.learning_transitions = 0
        """Transitions this rank collected after the warm-up: ``utd_ratio`` times it is the updates due."""
        # Last: a memory-mapped buffer creates its directory, once every other value has been checked (a subclass
        # checks its own arguments before calling this).
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

    def make_encoders(self, cnn: CNNSpec | None) -> tuple[Encoder, Encoder]:
        """The observation encoder (:func:`~rl_lightning.encoders.make_encoder`) and its target copy, which the target
        updates move with the target networks (a CNN's parameters; a flat encoder has none).

        The critics (DQN: the Q network) train the encoder; an actor reads its features detached, as in pixel SAC
        (Yarats et al., 2021), so the actor's loss never changes what the critics see.
        """
        encoder = make_encoder(self.observation_space, cnn=cnn)
        return encoder, copy.deepcopy(encoder).requires_grad_(False)

    # -- acting ------------------------------------------------------------------------------------------

    @abstractmethod
    def policy(self, observation: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Actions ``[num_envs, ...]`` (in the env's scale) for observations on the module's device: exploring
        (``deterministic=False``, e.g. with noise or ε-greedy) or the learned policy's best guess."""

    def random_action(self, num_envs: int) -> torch.Tensor:
        """The warm-up's actions: uniform over a bounded ``Box`` or a ``Discrete`` action space."""
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return torch.randint(int(space.n), (num_envs,), device=self.device) + int(space.start)
        if isinstance(space, gym.spaces.Box) and space.is_bounded():
            low = torch.as_tensor(space.low, dtype=torch.float32, device=self.device)
            high = torch.as_tensor(space.high, dtype=torch.float32, device=self.device)
            unit = torch.rand((num_envs, *low.shape), device=self.device) * 2 - 1
            return to_env_scale(unit, low, high)
        raise ValueError(
            f"{type(self).__name__} has no uniform warm-up action for the action space {space}: set "
            "init_random_frames=0, or override random_action in a subclass."
        )

    def deterministic_action(self, observation: torch.Tensor) -> torch.Tensor:
        return self.policy(observation, deterministic=True)

    def act(self, observation: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        observation = observation.to(self.device, non_blocking=True)  # from pinned memory: asynchronous
        if not deterministic and self.frames < self.init_random_frames:
            return {keys.ACTION: self.random_action(observation.shape[0]).cpu()}
        return {keys.ACTION: self.policy(observation, deterministic).cpu()}

    # -- the update schedule -----------------------------------------------------------------------------

    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]:
        """A replay sample of ``batch_size`` per update due: ``utd_ratio`` per transition collected after the warm-up.

        A batch collected after the first ``init_random_frames`` frames (by the policy, not at random) counts its
        transitions into :attr:`learning_transitions`; the updates due follow from that counter and ``updates``,
        both checkpointed and the same on every rank. Each sample is drawn when its update is about to run, so it
        sees the priorities of the updates before it.
        """
        if self.frames - self.data.global_frames_per_batch >= self.init_random_frames:
            self.learning_transitions += batch.numel()
        due = math.floor(self.utd_ratio * self.learning_transitions) - self.updates
        for _ in range(max(due, 0)):
            yield self.replay_buffer.sample(self.batch_size)

    @property
    def applied_updates(self) -> int:
        """Updates that changed the networks: ``updates`` less those skipped (``nonfinite: skip``)."""
        return self.updates - self.skipped_updates

    # -- callbacks, data and checkpoints ------------------------------------------------------------------

    def configure_callbacks(self) -> list[pl.Callback]:
        """The base callbacks, plus the replay buffer's, the target updater and the UTD ratio's, unless the trainer
        lists one that does the same (which is then used; one that does otherwise is refused)."""
        callbacks = super().configure_callbacks()
        listed = list(self.trainer.callbacks)  # type: ignore[attr-defined]  # set dynamically by Lightning
        for ours in (ReplayBufferTrainer(self.replay_buffer), self.target_updater, UTDRHook()):
            theirs = [cb for cb in listed if isinstance(cb, type(ours))]
            for cb in theirs:
                self._check_listed(cb)
            if not theirs:
                callbacks.append(ours)
        return callbacks

    def _check_listed(self, callback: pl.Callback) -> None:
        """Raises if ``callback``, listed in ``trainer.callbacks``, would not do what this model's arguments say."""
        name = type(self).__name__
        if isinstance(callback, ReplayBufferTrainer) and callback.buffer is not self.replay_buffer:
            raise ValueError(
                f"trainer.callbacks lists a ReplayBufferTrainer with a replay buffer of its own, but {name} samples "
                "its minibatches from the buffer built from its arguments (buffer_size, prioritized, n_step, ...), "
                "so yours would fill a buffer no update reads. Remove it from trainer.callbacks and set the model's "
                "buffer arguments, or in Python pass the model's buffer: ReplayBufferTrainer(model.replay_buffer)."
            )
        if isinstance(callback, TargetNetUpdaterHook):
            ours = self.target_updater
            if callback is not ours and (callback.tau, callback.interval) != (ours.tau, ours.interval):
                raise ValueError(
                    f"trainer.callbacks lists TargetNetUpdaterHook(tau={callback.tau}, interval={callback.interval}), "
                    f"but {name} updates its targets with tau={ours.tau}, target_update_interval={ours.interval} "
                    "(its arguments). Set the model's tau and target_update_interval instead, and remove the hook "
                    "from trainer.callbacks."
                )

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
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]  # set dynamically by Lightning
        if not any(isinstance(cb, ReplayBufferTrainer) and cb.buffer is self.replay_buffer for cb in callbacks):
            raise RuntimeError(
                f"{type(self).__name__} trains on replay samples, but no ReplayBufferTrainer fills its replay buffer "
                "(a configure_callbacks override that does not call super()?)."
            )
        self.replay_buffer.device = self.device  # samples arrive where the module trains

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rl_lightning"]["learning_transitions"] = self.learning_transitions

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.learning_transitions = int(checkpoint["rl_lightning"]["learning_transitions"])

    @abstractmethod
    def target_networks(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` network pairs that :class:`~rl_lightning.callbacks.TargetNetUpdaterHook` updates."""

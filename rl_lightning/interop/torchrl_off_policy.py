"""``TorchRLOffPolicyModule``: a torchrl off-policy loss (``SACLoss``, ``TD3Loss``, ``DQNLoss``, ``DDPGLoss``, ...)
trained on replay samples, as an :class:`~rl_lightning.algorithms.off_policy.OffPolicyModule`.

The off-policy base owns the replay buffer, the warm-up, the update-to-data schedule and the checkpointed replay;
:class:`~rl_lightning.interop.torchrl_module.TorchRLBase` owns what every torchrl adapter shares (the loss entries,
the optimizer, the torchrl target updater, acting through a ``TensorDictModule``). This file adds the exploring
policy and, for a torchrl ``ReplayBuffer`` the user gives, :class:`TorchRLReplay`, which presents it to the base as
its buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from rl_lightning import keys
from rl_lightning._checks import check_int
from rl_lightning.algorithms.off_policy import OffPolicyModule
from rl_lightning.callbacks import TargetNetUpdaterHook
from rl_lightning.encoders import Observation
from rl_lightning.interop import torchrl_missing
from rl_lightning.module import RLModule
from rl_lightning.replay import TRANSITION_KEYS
from rl_lightning.spaces import SpaceLike, space_to_dict

try:
    from torchrl.data import PrioritizedSampler
    from torchrl.data import ReplayBuffer as TorchRLReplayBuffer
    from torchrl.modules import AdditiveGaussianModule, EGreedyModule, OrnsteinUhlenbeckProcessModule
    from torchrl.objectives import LossModule, TargetNetUpdater
except ImportError as err:  # the core environment pins a tensordict that torchrl 0.14 does not accept
    raise torchrl_missing(__name__, err) from err

from rl_lightning.interop.torchrl_module import (
    TORCHRL_PARTS,
    OptimizerFactory,
    TorchRLBase,
    check_loss_module,
    policy_or_default,
)

ANNEALED_EXPLORATION = (EGreedyModule, AdditiveGaussianModule, OrnsteinUhlenbeckProcessModule)
"""torchrl's exploration modules whose noise anneals with ``step(frames)``, which the module calls after each batch."""


class TorchRLOffPolicyModule(TorchRLBase, OffPolicyModule):
    """Trains a torchrl off-policy loss on replay samples, with the policy it trains exploring.

    Per collector batch, the base stores the transitions in the replay buffer and makes ``utd_ratio`` updates per
    collected transition due (after ``init_random_frames`` frames of uniform random actions); each update samples
    ``batch_size`` transitions and takes one optimizer step on the sum of the loss module's ``loss_*`` entries
    (DQNLoss's ``loss`` trains as ``loss_objective``). The other entries are logged as ``train/<name>``. After every
    applied update the torchrl ``target_updater`` moves the loss's target parameters.

    - **Policy.** ``policy`` collects under torchrl's ``RANDOM`` interaction type, with its exploration: a SAC actor
      samples its distribution, ``TensorDictSequential(actor, AdditiveGaussianModule(...))`` adds Gaussian noise
      (TD3, DDPG), ``TensorDictSequential(qvalue_actor, EGreedyModule(...))`` is ε-greedy (DQN). Evaluation and export
      run the same module under ``DETERMINISTIC``: the distribution's mode or mean, exploration modules off. torchrl's
      annealed exploration modules in it (``EGreedyModule``, ``AdditiveGaussianModule``,
      ``OrnsteinUhlenbeckProcessModule``) are stepped by the frames of each batch (all ranks), as torchrl's example
      scripts do; their epsilon or sigma are buffers, so checkpoints hold them.
    - **Replay.** By default the base's :class:`~rl_lightning.replay.ReplayBuffer` (uniform, in memory or
      memory-mapped): its samples carry torchrl's keys. Or a torchrl ``ReplayBuffer`` passed as ``replay_buffer`` (its
      storage, sampler and transforms as the user built them), filled with the flattened transitions of each
      collected batch and checkpointed through its own ``state_dict`` (see :class:`TorchRLReplay`).
    - **Not supported.** n-step returns of the base buffer (``n_step > 1``): the stored rewards would be n-step sums,
      while the torchrl loss discounts the next value once with its own gamma. Prioritized replay of the base buffer:
      torchrl's losses do not read its importance weights. A torchrl ``TensorDictPrioritizedReplayBuffer`` has its
      priorities updated from the ``td_error`` the loss writes, but its ``priority_weight`` is not applied either (the
      sampling bias stays uncorrected), and it is untested here: the torchrl 0.14.1 wheel this project pins lacks the
      compiled segment tree ``PrioritizedSampler`` needs.

    Checkpoints hold the networks, the loss's target parameters and SAC's ``log_alpha`` (all in the loss module),
    Adam's state, the exploration state, the replay contents and counters. ``load_from_checkpoint`` needs the modules
    built again: ``TorchRLOffPolicyModule.load_from_checkpoint(path, loss_module=..., policy=...,
    target_updater=...)``.

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space.
        loss_module: the torchrl loss, e.g. ``SACLoss(actor, qvalue, action_spec=...)`` or
            ``DQNLoss(qvalue_actor, action_space="categorical", delay_value=True)``. Its value estimator's ``gamma``
            is the model's (call ``loss_module.make_value_estimator(gamma=...)`` before building this module).
        policy: the exploring policy that collects, writing ``action`` from ``observation``. ``None``: the loss
            module's ``actor_network``, or DQN's ``value_network`` (greedy: add an ``EGreedyModule`` to explore).
        optimizer: builds the optimizer from all the parameters (SAC's ``log_alpha`` included); ``None``: Adam with
            ``lr``.
        lr: Adam's learning rate when ``optimizer`` is ``None``.
        target_updater: torchrl's ``SoftUpdate(loss_module, tau=...)`` or ``HardUpdate(loss_module,
            value_network_update_interval=...)``, stepped after every applied update. Required when the loss has
            target parameters.
        replay_buffer: a torchrl ``ReplayBuffer`` to store and sample from instead of the base's buffer; then the
            ``buffer_*`` arguments and ``observation_dtype`` are unused.
        batch_size: transitions per replay sample (one update).
        buffer_size: the base buffer's capacity in transitions (per rank).
        buffer_storage: ``"memory"`` or ``"memmap"`` (memory-mapped files in ``buffer_dir``).
        buffer_dir: directory of a memory-mapped buffer.
        observation_dtype: the dtype floating observations are stored as (``"float32"`` or ``"float64"``).
        n_step: must be 1 (see *Not supported*).
        init_random_frames: frames (all ranks) collected with uniform random actions before learning starts.
        utd_ratio: updates per collected transition (update-to-data ratio).
        max_grad_norm: clip the gradient norm of each parameter group to this (``None``: no clipping).
        nonfinite: an update with NaN or inf gradients stops the run (``"raise"``) or is skipped (``"skip"``, no
            target update either).

    Example:
        >>> import gymnasium as gym
        >>> from torchrl.data import Categorical as CategoricalSpec
        >>> from torchrl.modules import MLP, QValueActor
        >>> from torchrl.objectives import DQNLoss, SoftUpdate
        >>> qvalue = QValueActor(MLP(in_features=4, out_features=2), in_keys=["observation"], spec=CategoricalSpec(2))
        >>> loss = DQNLoss(qvalue, action_space="categorical", delay_value=True)
        >>> model = TorchRLOffPolicyModule(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), loss,
        ...                                target_updater=SoftUpdate(loss, tau=0.01))
        >>> model.act(torch.zeros(3, 4), deterministic=True)["action"].shape
        torch.Size([3])
    """

    def __init__(
        self,
        observation_space: SpaceLike | None,
        action_space: SpaceLike | None,
        loss_module: LossModule,
        policy: TensorDictModuleBase | None = None,
        optimizer: OptimizerFactory | None = None,
        lr: float = 3e-4,
        target_updater: TargetNetUpdater | None = None,
        replay_buffer: TorchRLReplayBuffer | None = None,
        batch_size: int = 256,
        buffer_size: int = 1_000_000,
        buffer_storage: Literal["memory", "memmap"] = "memory",
        buffer_dir: str | None = None,
        observation_dtype: Literal["float32", "float64"] = "float32",
        n_step: int = 1,
        init_random_frames: int = 5000,
        utd_ratio: float = 1.0,
        max_grad_norm: float | None = None,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        check_loss_module(loss_module)
        policy = policy_or_default(policy, loss_module, ("actor_network", "value_network"))
        check_int("n_step", n_step, hint="")
        if n_step != 1:
            raise ValueError(
                f"n_step={n_step} is not supported with a torchrl loss: the buffer would store {n_step}-step reward "
                f"sums, but {type(loss_module).__name__} discounts the next value once, with its own gamma, and "
                "would learn a wrong target. Use n_step=1."
            )
        targets = [name for name, _ in loss_module.named_children() if name.startswith("target_")]
        if targets and target_updater is None:
            raise ValueError(
                f"{type(loss_module).__name__} has target parameters ({', '.join(targets)}) but no target_updater "
                "moves them: they would stay at their initial values. Pass target_updater=SoftUpdate(loss_module, "
                "tau=0.005) or HardUpdate(loss_module, value_network_update_interval=...) from torchrl.objectives, "
                "or build the loss without target networks (e.g. delay_value=False)."
            )
        if replay_buffer is not None:
            _check_torchrl_buffer(replay_buffer, batch_size)
        # The value estimator (TD(0) by default) is built now, as the loss's first call would: its gamma is the model's
        # discount, and its buffers are in the state dict from the start, as in a checkpoint of a trained model.
        estimator = loss_module.value_estimator
        gamma = float(getattr(estimator, "gamma", 0.99))
        super().__init__(
            observation_space,
            action_space,
            gamma=gamma,
            batch_size=batch_size,
            buffer_size=buffer_size if replay_buffer is None else batch_size,  # unused then: nothing is allocated
            buffer_storage=buffer_storage if replay_buffer is None else "memory",
            buffer_dir=buffer_dir if replay_buffer is None else None,
            observation_dtype=observation_dtype,
            prioritized=False,
            priority_alpha=0.6,
            priority_beta=0.4,
            n_step=1,
            init_random_frames=init_random_frames,
            utd_ratio=utd_ratio,
            # The base's TargetNetUpdaterHook is left out (configure_callbacks): target_updater moves the targets.
            tau=1.0,
            target_update_interval=1,
            max_grad_norm=max_grad_norm,
            nonfinite=nonfinite,
        )
        self.save_hyperparameters(ignore=[*TORCHRL_PARTS, "replay_buffer"])
        self.hparams["observation_space"] = space_to_dict(self.observation_space)
        self.hparams["action_space"] = space_to_dict(self.action_space)
        self.hparams["_torchrl_replay_buffer"] = None if replay_buffer is None else type(replay_buffer).__name__
        self.set_torchrl_parts(loss_module, optimizer, lr, target_updater)
        self.actor = policy
        self.exploration = [m for m in policy.modules() if isinstance(m, ANNEALED_EXPLORATION)]
        if replay_buffer is not None:
            # The base samples from, fills (ReplayBufferTrainer) and checkpoints self.replay_buffer: the adapter gives
            # the torchrl buffer that interface.
            self.replay_buffer = TorchRLReplay(replay_buffer)  # type: ignore[assignment]

    # -- acting ------------------------------------------------------------------------------------------

    def policy(self, observation: Observation, deterministic: bool) -> torch.Tensor:
        """The exploring policy's actions (``RANDOM``), or its deterministic ones (``DETERMINISTIC``)."""
        action: torch.Tensor = self.run_policy(self.actor, observation, deterministic).get(keys.ACTION)
        return action

    def on_post_steps(self, trainer: pl.Trainer, pl_module: RLModule) -> None:
        """Anneals torchrl's exploration modules in the policy by the frames of this batch (all ranks)."""
        for module in self.exploration:
            module.step(self.data.global_frames_per_batch)

    # -- the update schedule -----------------------------------------------------------------------------

    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]:
        """The base's replay samples (``utd_ratio`` per transition after the warm-up), on the module's device."""
        for sample in super().optim_batches(batch, epoch):
            yield sample.to(self.device, non_blocking=True)

    def target_networks(self) -> list[tuple[nn.Module, nn.Module]]:
        """None for :class:`~rl_lightning.callbacks.TargetNetUpdaterHook`: the loss's target parameters move with
        ``target_updater``."""
        return []

    def configure_callbacks(self) -> list[pl.Callback]:
        """The base's callbacks (replay buffer, UTD ratio), without its ``TargetNetUpdaterHook``."""
        listed = [cb for cb in self.trainer.callbacks if isinstance(cb, TargetNetUpdaterHook)]  # type: ignore[attr-defined]
        if listed:
            raise ValueError(
                f"trainer.callbacks lists {type(listed[0]).__name__}, which moves the target_networks() pairs of "
                "rl_lightning's own algorithms; a torchrl loss keeps its targets as target_*_params that torchrl's "
                "updaters move. Remove it and pass target_updater=SoftUpdate(loss_module, tau=...) (its tau) or "
                "HardUpdate(loss_module, value_network_update_interval=interval - 1) to the model."
            )
        # self.target_updater is the base's TargetNetUpdaterHook (this model's torchrl one is target_net_updater).
        return [cb for cb in super().configure_callbacks() if cb is not self.target_updater]


class TorchRLReplay:
    """A torchrl ``ReplayBuffer`` behind the interface the off-policy base uses of its own buffer.

    - ``extend``: stores the collector batch ``[num_envs, T]`` flattened env-major, its transition keys
      (:data:`~rl_lightning.replay.TRANSITION_KEYS`) only, through the buffer's writer (and its transforms).
    - ``sample``: the buffer's ``sample(batch_size)``; the module moves it to its device.
    - priorities: with a prioritized sampler, ``update_priority(index, td_error)`` after each loss
      (:class:`~rl_lightning.callbacks.ReplayBufferTrainer` calls it with the ``td_error`` torchrl's losses write).
    - checkpoints: the buffer's own ``state_dict`` (storage, writer cursor, sampler state), carried by
      ``ReplayBufferTrainer`` as it carries the base buffer's (per rank under DDP). A ``LazyTensorStorage`` saves its
      whole capacity, as torchrl's ``state_dict`` does.

    Args:
        buffer: the torchrl replay buffer.
    """

    n_step = 1
    """No n-step returns: what the base's checks read."""

    def __init__(self, buffer: TorchRLReplayBuffer) -> None:
        self.buffer = buffer
        self.device = torch.device("cpu")
        """Where samples go (the base sets the module's device at the start of a fit)."""

    @property
    def prioritized(self) -> bool:
        """Whether the buffer's sampler keeps priorities (torchrl's ``PrioritizedSampler``)."""
        return isinstance(self.buffer.sampler, PrioritizedSampler)

    def __len__(self) -> int:
        return len(self.buffer)

    def extend(self, batch: TensorDictBase) -> None:
        flat = batch.select(*TRANSITION_KEYS).reshape(-1)
        if torch.is_inference_mode_enabled():  # the stored tensors are written in place by later calls
            with torch.inference_mode(False):
                self.buffer.extend(flat.clone())
            return
        self.buffer.extend(flat)

    def sample(self, batch_size: int) -> TensorDict:
        sample: TensorDict = self.buffer.sample(batch_size)
        return sample

    def update_priority(self, index: torch.Tensor, priority: torch.Tensor) -> None:
        self.buffer.update_priority(index, priority.reshape(index.shape))  # DQNLoss writes [B, 1], SACLoss [B]

    def state_dict(self) -> dict[str, Any]:
        """``{"data": buffer.state_dict(), "priority": None}``: the keys ``ReplayBufferTrainer`` stages per rank."""
        return {"data": self.buffer.state_dict(), "priority": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        data = dict(state["data"])
        storage = data.get("_storage")
        if isinstance(storage, dict) and isinstance(storage.get("_storage"), dict):
            # A TensorDict storage's state dict keeps its batch size in the OrderedDict's metadata, which the
            # checkpoint (plain dicts, weights_only) does not carry: rebuild it from the stored tensors [capacity, ...].
            flat = storage["_storage"]
            tensors = [value for value in flat.values() if isinstance(value, torch.Tensor)]
            if tensors and not hasattr(flat, "_metadata"):
                rebuilt = TensorDict(dict(flat), batch_size=tensors[0].shape[:1]).unflatten_keys(".")
                data["_storage"] = {**storage, "_storage": rebuilt.state_dict()}
        self.buffer.load_state_dict(data)


def _check_torchrl_buffer(buffer: Any, batch_size: int) -> None:
    """Raises unless ``buffer`` is a torchrl ``ReplayBuffer`` whose own batch size (if any) is ``batch_size``."""
    if not isinstance(buffer, TorchRLReplayBuffer):
        raise TypeError(
            f"replay_buffer is a {type(buffer).__name__}, not a torchrl ReplayBuffer. Pass e.g. "
            "torchrl.data.TensorDictReplayBuffer(storage=LazyTensorStorage(100_000)), or None for rl_lightning's "
            "buffer (buffer_size=...)."
        )
    own = buffer.batch_size
    if own is not None and own != batch_size:
        raise ValueError(
            f"replay_buffer samples batch_size={own} (its constructor's), but the model's batch_size={batch_size}. "
            f"Pass batch_size={own} to the model, or build the buffer without a batch_size."
        )

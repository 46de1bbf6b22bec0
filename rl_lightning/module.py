"""``RLModule``: the LightningModule every algorithm derives from."""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from tensordict import TensorDict
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import Self

from rl_lightning import keys
from rl_lightning.callbacks.graceful_interrupt import GracefulInterrupt
from rl_lightning.callbacks.lost_rank_report import LostRankReport
from rl_lightning.checkpoint import check_resumable, use_rl_checkpoint_io, verify_checkpoint
from rl_lightning.compat import check_callbacks, check_trainer
from rl_lightning.data import RLDataModule
from rl_lightning.distributed import (
    PER_RANK,
    gather_per_rank,
    gathers,
    own_state,
    rng_state,
    seed_rank,
    set_rng_state,
)
from rl_lightning.encoders import Observation
from rl_lightning.functional import total_loss
from rl_lightning.inference import env_action, policy_input
from rl_lightning.loop import RLLoop
from rl_lightning.metrics import EpisodeStatistics
from rl_lightning.spaces import SpaceLike, space_from_dict, space_to_dict


class RLModule(pl.LightningModule, ABC):
    """Base of the algorithms: counters, the RL loop in ``training_step``, evaluation, checkpoint state.

    Lightning's fit loop fetches one collector batch per ``training_step`` (through ``dataloader_iter``,
    which turns off Lightning's one-batch prefetch, so every rollout is collected by the current policy);
    :class:`~rl_lightning.loop.RLLoop` then runs the optimizer steps under manual optimization.

    A subclass implements :meth:`act`, :meth:`loss` and :meth:`optim_batches`, and may override
    :meth:`prepare_batch`, :meth:`step_optimizers`, :meth:`stop_optim_early` and ``optim_epochs``. It may also
    implement any hook of :class:`~rl_lightning.RLCallback` under the same name and signature.

    Counters (independent of ``trainer.global_step``, which counts every ``optimizer.step()``):
        ``frames``: env frames collected over all ranks. ``updates``: inner optimization steps.
        ``episodes``: completed training episodes over all ranks.
    """

    optim_epochs: int = 1
    """Passes over :meth:`optim_batches` per collector batch."""
    _action_min: torch.Tensor
    _action_max: torch.Tensor
    batch_keys: tuple[str | tuple[str, ...], ...] = ()
    """The collected keys the algorithm reads (``SelectKeys`` refuses to drop them); empty: not declared."""
    trains_on_replay: bool = False
    """Whether the minibatches are replay samples rather than parts of the collected batch (off-policy algorithms):
    what a callback that rewrites the collected batch (``RewardNormalizer``) needs to know."""
    max_grad_norm: float | None = None
    """Clip each parameter group's gradient norm to this value (``None``: no clipping)."""
    nonfinite: Literal["raise", "skip"] = "raise"
    """What an optimizer step with NaN or inf gradients does: stop the run with a message naming the update,
    the loss terms and the last checkpoint (``"raise"``), or change nothing and go on (``"skip"``, counted in
    ``skipped_updates`` and logged as ``train/skipped_updates``)."""

    def __init__(self, observation_space: SpaceLike | None, action_space: SpaceLike | None) -> None:
        super().__init__()
        if observation_space is None or action_space is None:
            raise ValueError(
                f"{type(self).__name__} needs observation_space and action_space. The CLI links them from the "
                "data; in Python pass them from the DataModule, e.g. "
                f"{type(self).__name__}(data.observation_space, data.action_space, ...)."
            )
        self.automatic_optimization = False
        self.observation_space = space_from_dict(observation_space)
        self.action_space = space_from_dict(action_space)
        self.frames = 0
        self.updates = 0
        self.episodes = 0
        self.loop = RLLoop(self)
        self._direct_torch = False
        self.logging_batch = True
        """Whether this batch's metrics reach the loggers (every ``trainer.log_every_n_steps`` batches)."""
        self._start_time = 0.0
        self._start_frames = 0
        self.skipped_updates = 0
        self.stop_requested = False
        """Set on any rank (by ``GracefulInterrupt``) to stop the fit at the end of a collector batch."""
        self.stop_agreed = False
        """Whether some rank had ``stop_requested`` when this batch started: the same answer on every rank."""
        self._last_losses: TensorDict | None = None
        self._grad_scaler = False
        self._check_loss = True
        self._rng_restored = False
        self.episode_stats = EpisodeStatistics()
        """The last ``stats_window`` completed training episodes (the data's), behind ``rollout/episode_return``."""
        self._clips_actions = False
        space = self.action_space
        if isinstance(space, gym.spaces.Box) and not np.all(np.isinf(space.low) & np.isinf(space.high)):
            # forward clips Box actions to the bounds, as the collector does before stepping the envs (PPO's Gaussian
            # actions are not bounded by the network); not checkpointed: the bounds are the action space's.
            self._clips_actions = True
            self.register_buffer("_action_min", torch.as_tensor(space.low, dtype=torch.float32), persistent=False)
            self.register_buffer("_action_max", torch.as_tensor(space.high, dtype=torch.float32), persistent=False)

    def save_rl_hyperparameters(self) -> None:
        """``save_hyperparameters`` of the arguments of this model's own class (``type(self).__init__``, also when
        called from a parent's ``__init__``: DDPG's, not the TD3 it builds on), with the spaces as plain data."""
        self.save_hyperparameters(ignore=["observation_space", "action_space"], frame=_init_frame(self))
        self.hparams["observation_space"] = space_to_dict(self.observation_space)
        self.hparams["action_space"] = space_to_dict(self.action_space)

    # -- the algorithm's interface ---------------------------------------------------------------------

    @abstractmethod
    def act(self, observation: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        """The collector's policy: maps observations ``[num_envs, ...]`` to ``{"action": ..., ...}``."""

    def deterministic_action(self, observation: Observation) -> torch.Tensor:
        """The deterministic policy's actions for a batch of observations on the module's device, in the env's scale
        but not clipped (see :meth:`forward`), computed with tensor operations only so that :meth:`forward` traces
        and exports. This default calls :meth:`act`; the algorithm families override it."""
        return self.act(observation, deterministic=True)[keys.ACTION].to(self.device)

    def forward(self, observation: Observation) -> torch.Tensor:
        """The deterministic action for a batch of raw observations ``[B, *obs_shape]``: what the env takes, with
        observation normalization, the action scaling and, for ``Box`` actions, clipping to the bounds included.

        This is what Lightning's ``to_torchscript(method="trace")`` and ``to_onnx`` (and
        :func:`~rl_lightning.export.export_policy`) export.
        """
        action = self.deterministic_action(observation)
        if self._clips_actions:
            action = torch.maximum(torch.minimum(action, self._action_max), self._action_min)
        return action

    @torch.inference_mode()
    def predict(self, observation: Any, deterministic: bool = True) -> np.ndarray:
        """The policy's action for one observation, or its actions for a batch, as the env takes them.

        Args:
            observation: one observation as the env returns it, or a batch stacked on a first dim: numpy, torch or
                nested lists (a mapping of the keys for a ``Dict`` space). Observation normalization happens inside.
            deterministic: the policy's best guess (:meth:`forward`); ``False`` samples the exploring policy (off-policy
                algorithms: uniform actions while ``frames < init_random_frames``).

        Returns:
            numpy actions in the action space's dtype, scaled and clipped to a ``Box``'s bounds, integers for discrete
            spaces: one action (a numpy scalar for ``Discrete``) for one observation, ``[B, ...]`` for a batch.

        Raises:
            ValueError: for an observation whose shape or dtype does not fit the observation space, naming the
                expected shape.

        Example:
            >>> from rl_lightning import PPO
            >>> model = PPO(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), hidden_sizes=[8])
            >>> action = model.predict(np.zeros(4, dtype=np.float32))
            >>> int(action) in (0, 1), model.predict(np.zeros((5, 4))).shape
            (True, (5,))
        """
        batch, batched = policy_input(observation, self.observation_space)
        batch = batch.to(self.device)
        action = self(batch) if deterministic else self.act(batch, deterministic=False)[keys.ACTION]
        actions = env_action(action, self.action_space)
        return actions if batched else actions[0]

    @abstractmethod
    def loss(self, batch: TensorDict) -> TensorDict:
        """The losses of one minibatch: scalar ``loss_*`` entries sum to the objective; the other (scalar)
        entries are detached diagnostics. Per-sample values for other hooks (e.g. TD errors for priorities)
        go into ``batch`` instead, as torchrl's losses do."""

    @abstractmethod
    def optim_batches(self, batch: TensorDict, epoch: int) -> Iterator[TensorDict]:
        """The minibatches of one pass over the collector batch, one per optimizer step."""

    def prepare_batch(self, batch: TensorDict) -> TensorDict:
        """Turns a collected batch into training data (e.g. writes advantages). Runs after ``on_batch_process``."""
        return batch

    def configure_callbacks(self) -> list[pl.Callback]:
        """Callbacks every RL run gets: :class:`~rl_lightning.callbacks.GracefulInterrupt` (Ctrl-C stops at the end
        of a batch with a checkpoint) and :class:`~rl_lightning.callbacks.LostRankReport` (a run that lost a rank
        names it). Algorithms add theirs (SAC: replay buffer, target updates, UTD ratio).

        Lightning calls this first in a fit, before any callback's ``setup`` and before the loggers make their
        directories and the CLI saves its config: it is where a Lightning callback that cannot work in an RL fit
        is refused (:func:`~rl_lightning.compat.check_callbacks`) and the data is checked against the model
        (:meth:`check_data`), so a run refused here leaves nothing on disk. :meth:`setup` checks again for
        subclasses that do not call this."""
        if self.trainer.state.fn == "fit":
            check_callbacks(self.trainer.callbacks)  # type: ignore[attr-defined]  # set dynamically by Lightning
        check_trainer(self.trainer)
        self.check_data(self.data)
        return [GracefulInterrupt(), LostRankReport()]

    def target_networks(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` network pairs that ``TargetNetUpdaterHook`` updates; none by default."""
        return []

    @property
    def stops_optim_early(self) -> bool:
        """Whether :meth:`stop_optim_early` can stop a batch's epochs (else the loop never calls it)."""
        return False

    def stop_optim_early(self, epoch_losses: TensorDict) -> bool:
        """Whether to skip the remaining epochs, given the mean losses of the last one.

        Must return the same answer on every rank (see ``trainer.strategy.reduce_boolean_decision``).
        """
        return False

    def step_optimizers(self, losses: TensorDict) -> None:
        """One backward pass on the sum of the ``loss_*`` entries, then a step of the optimizer(s).

        Gradient clipping happens in :meth:`on_before_optimizer_step`, on unscaled gradients under ``16-mixed``.
        """
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = total_loss(losses)
        # One process checks the loss (a scalar: cheap); under DDP each rank's loss differs, so the all-reduced
        # gradients are checked instead (all ranks see the same ones and agree), in on_before_optimizer_step.
        if self._check_loss and not bool(torch.isfinite(loss)):
            self._nonfinite("loss", losses)
            return  # skipped: no backward, no step
        self._last_losses = losses
        self.backward_loss(loss)
        for optimizer in optimizers:
            if self._direct_torch:
                # What LightningOptimizer.step does here, minus dispatching no-op hooks to every callback:
                # count the step (trainer.global_step), run this module's hook (clipping), step torch's optimizer.
                optimizer._on_before_step()
                self.on_before_optimizer_step(optimizer.optimizer)
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                optimizer.step()

    def backward_loss(self, loss: torch.Tensor) -> None:
        """``self.manual_backward(loss)``, or plain ``loss.backward()`` where that is all it would do."""
        if self._direct_torch:
            loss.backward()
        else:
            self.manual_backward(loss)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clips the gradient norm of each parameter group to ``max_grad_norm`` (SAC: actor, critics and
        temperature separately), and stops on (or skips, see :attr:`nonfinite`) gradients with NaN or inf, where
        the norm is computed anyway (clipping) or needed (DDP, see :meth:`step_optimizers`). Under ``16-mixed`` the
        gradients are unscaled first (Lightning does it for unfused optimizers, this hook for fused ones); float16's
        gradient scaler skips steps with inf gradients itself."""
        norm: torch.Tensor | None = None
        if self.max_grad_norm is not None:
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
                # Lightning leaves the unscaling of a fused optimizer (PPO's and SAC's Adam) to its step, so the
                # gradients are still scaled here. Unscale them before clipping; the scaler's step then sees
                # them unscaled and passes no scale to the optimizer, so nothing is unscaled twice.
                scaler.unscale_(optimizer)
            norms = [
                torch.nn.utils.clip_grad_norm_(group["params"], self.max_grad_norm) for group in optimizer.param_groups
            ]
            norm = norms[0] if len(norms) == 1 else torch.stack(norms).sum()
        elif not self._check_loss:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if norm is not None and not self._grad_scaler and not bool(torch.isfinite(norm)):
            self._nonfinite("gradients", self._last_losses)
            optimizer.zero_grad(set_to_none=True)  # skipped: the step changes no parameter

    def _nonfinite(self, what: str, losses: TensorDict | None) -> None:
        """Raises, naming the update, the loss terms and the last checkpoint; with ``nonfinite="skip"`` counts the
        skipped update and returns (the caller makes sure it changes nothing)."""
        if self.nonfinite == "skip":
            self.skipped_updates += 1
            return
        names = [] if losses is None else [k for k in losses.keys() if isinstance(k, str) and k.startswith("loss_")]
        terms = ", ".join(f"{k}={float(losses.get(k).detach()):.4g}" for k in names) if losses is not None else ""
        saved = [
            Path(p)
            for cb in self.trainer.checkpoint_callbacks
            if not getattr(cb, "save_weights_only", False)  # weights-only checkpoints cannot resume a fit
            for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
            if p and Path(p).exists()
        ]
        checkpoint = max(saved, key=lambda p: p.stat().st_mtime) if saved else None
        raise FloatingPointError(
            f"NaN or inf {what} at update {self.updates + 1} (frames {self.frames}, global step "
            f"{self.trainer.global_step}); the losses of this step: {terms or 'unknown'}. "
            + (
                f"The last checkpoint, written before this step: {checkpoint}. "
                if checkpoint
                else "No checkpoint was written before this step. "
            )
            + "Lower the learning rate, scale or clip the rewards, or set max_grad_norm; to skip such updates "
            "instead, set the model's nonfinite: skip."
        )

    # -- access to the data ------------------------------------------------------------------------------

    @property
    def data(self) -> RLDataModule:
        """The :class:`~rl_lightning.RLDataModule` the trainer is using."""
        if self._jit_is_scripting and self._trainer is None:
            # Tracing (to_torchscript) probes every attribute with hasattr, which only a missing one passes. The flag
            # is Lightning's (2.5-2.6) while to_torchscript runs; tests/test_inference.py traces a module without one.
            raise AttributeError(f"{type(self).__name__} has no data while it is traced without a trainer.")
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, RLDataModule):
            raise RuntimeError(
                f"{type(self).__name__} is trained on an RLDataModule, but the trainer has {datamodule!r}. "
                "Call trainer.fit(model, datamodule=RLDataModule(...))."
            )
        return datamodule

    def check_data(self, data: RLDataModule) -> None:
        """Raises if the data does not fit this module (spaces, batch sizes, and the data's own
        ``check_module``). Runs in :meth:`setup`."""
        if space_to_dict(data.observation_space) != space_to_dict(self.observation_space) or space_to_dict(
            data.action_space
        ) != space_to_dict(self.action_space):
            raise ValueError(
                f"The data's env {data.env_id!r} has observation space {data.observation_space} and action space "
                f"{data.action_space}, but the model was built for {self.observation_space} and "
                f"{self.action_space}. Build the model from this data's spaces."
            )
        data.check_module(self)
        fitting = self._trainer is None or self.trainer.state.fn == "fit"
        if fitting and data.world_size > 1 and data.total_frames < data.global_frames_per_batch:
            raise ValueError(
                f"total_frames={data.total_frames} is below one batch of all {data.world_size} ranks "
                f"(frames_per_batch={data.frames_per_batch} each, {data.global_frames_per_batch} together): the run "
                f"would collect {data.global_frames_per_batch} frames. total_frames is the budget of all ranks; raise "
                f"it to {data.global_frames_per_batch} or more, or lower data.frames_per_batch (it is per rank)."
            )

    # -- Lightning hooks -----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit":
            check_callbacks(self.trainer.callbacks)  # type: ignore[attr-defined]  # set dynamically by Lightning
        check_trainer(self.trainer)
        self.check_data(self.data)
        use_rl_checkpoint_io(self.trainer)
        if self.episode_stats.window != self.data.stats_window:  # before a checkpoint restores its episodes
            self.episode_stats = EpisodeStatistics(self.data.stats_window)

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1 and not self._rng_restored:
            seed_rank(self.trainer.global_rank)
        self._rng_restored = False
        self.loop.setup(self.trainer)
        self._direct_torch = _can_call_torch_directly(self)
        self._grad_scaler = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        self._check_loss = self.trainer.world_size == 1
        wrapper = self.trainer.strategy.model
        if isinstance(wrapper, DistributedDataParallel):
            # DDP broadcasts rank zero's buffers at every forward (here: every collector batch), a collective and a
            # sync point each time. An RLModule's buffers are the same on every rank without it: constants (action
            # bounds) and observation-normalizer statistics, which the module all-reduces itself.
            wrapper.broadcast_buffers = False
        self._start_time = time.perf_counter()
        self._start_frames = self.frames

    def training_step(self, dataloader_iter: Iterator[Any]) -> None:
        collected, _, _ = next(dataloader_iter)
        batch = collected.to(self.device, non_blocking=True)
        self.frames += self.data.global_frames_per_batch
        # Lightning writes step metrics every `log_every_n_steps` batches and drops the others; each
        # `self.log` call costs ~0.5 ms, so the loop only logs on the batches that are written.
        every: int = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set dynamically by Lightning
        self.logging_batch = bool(every) and (
            (self.loop.batches + 1) % every == 0 or self.frames >= self.data.total_frames
        )
        self._log_rollout(collected)
        self.loop.run(batch)
        if self.frames >= self.data.total_frames:
            self.trainer.should_stop = True

    def _log_rollout(self, batch: TensorDict) -> None:
        """Adds the episodes completed in this (CPU) batch to :attr:`episode_stats`, and logs counters, fps and the
        mean return and length of the last ``stats_window`` episodes of all ranks. Stored data (``data.collects``
        false) has no episodes of its own: only the counters and fps are logged."""
        ended_here = self._count_episodes(batch) if self.data.collects else 0
        if self.trainer.world_size > 1:
            # One all-reduce a batch: the episodes completed, and whether any rank was asked to stop (Ctrl-C).
            local = [float(ended_here), float(self.stop_requested)]
            counts = torch.tensor(local, dtype=torch.float64, device=self.device)
            count, stops = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        else:
            count, stops = float(ended_here), float(self.stop_requested)
        self.episodes += int(count)
        self.stop_agreed = stops > 0
        on_bar_too = self.trainer.progress_bar_callback is not None
        if not (self.logging_batch or on_bar_too):
            return
        elapsed = max(time.perf_counter() - self._start_time, 1e-9)
        metrics: dict[str, float] = {
            "step": float(self.frames),
            "frames": float(self.frames),
            "time/fps": (self.frames - self._start_frames) / elapsed,
        }
        if self.data.collects:
            metrics["rollout/episodes"] = float(self.episodes)
        if self.nonfinite == "skip":
            metrics["train/skipped_updates"] = float(self.skipped_updates)
        # No episode ended yet on any rank (a count all ranks agree on): nothing to average, and no gather to join.
        averaged = 0.0
        if self.episodes:
            mean_return, mean_length, averaged = self.episode_stats.compute().tolist()  # gathers the ranks' windows
        if averaged:
            metrics["rollout/episode_return"] = mean_return
            metrics["rollout/episode_length"] = mean_length
        on_bar: dict[str, float] = {k: metrics.pop(k) for k in ("rollout/episode_return", "time/fps") if k in metrics}
        if self.logging_batch:
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        self.log_dict(on_bar, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)

    def _count_episodes(self, batch: TensorDict) -> int:
        """Adds the episodes completed in this collected (CPU) batch to :attr:`episode_stats`; returns their count."""
        # Whole episodes end where the collector wrote their length: not where a training-only wrapper ended one early
        # (EpisodicLife's lost lives), which is `done` too but starts no new game.
        done = batch[keys.NEXT_EPISODE_LENGTH].reshape(*batch.batch_size, -1)[..., 0] > 0
        env, t = done.nonzero(as_tuple=True)
        order = t.argsort(stable=True)  # in the order they ended
        env, t = env[order], t[order]
        steps = batch.batch_size[1]
        # The clock of the episode ends: frames of all ranks when each ended (the ranks step in lockstep).
        ended = (self.frames - self.data.global_frames_per_batch) + (t + 1) * (
            self.data.global_frames_per_batch // steps
        )
        if len(t):
            self.episode_stats.update(
                batch[keys.NEXT_EPISODE_RETURN].reshape(*done.shape)[env, t],
                batch[keys.NEXT_EPISODE_LENGTH].reshape(*done.shape)[env, t],
                ended,
            )
        return len(t)

    def _log_evaluation(self, batch: TensorDict, prefix: str) -> None:
        size = batch.batch_size[0]
        returns = batch[keys.EPISODE_RETURN].to(torch.float32)
        lengths = batch[keys.EPISODE_LENGTH].to(torch.float32)
        self.log(f"{prefix}/episode_return", returns.mean(), prog_bar=True, sync_dist=True, batch_size=size)
        self.log(f"{prefix}/episode_length", lengths.mean(), sync_dist=True, batch_size=size)
        if self.trainer.state.fn == "fit":  # plot evaluations against env frames, like the training curves
            self.log("step", float(self.frames), sync_dist=True, batch_size=size)
            self.log("frames", float(self.frames), sync_dist=True, batch_size=size)  # checkpoint names use it

    def validation_step(self, batch: TensorDict, batch_idx: int) -> None:
        self._log_evaluation(batch, "val")

    def test_step(self, batch: TensorDict, batch_idx: int) -> None:
        self._log_evaluation(batch, "test")

    def predict_step(self, batch: TensorDict, batch_idx: int) -> TensorDict:
        """The evaluation episodes of ``trainer.predict`` (:meth:`RLDataModule.predict_dataloader`): their
        ``episode_return`` and ``episode_length``, ``[eval_episodes]``."""
        return batch

    # -- checkpoint state ---------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rl_lightning"] = {
            "algorithm": type(self).__name__,
            "frames": self.frames,
            "updates": self.updates,
            "episodes": self.episodes,
            "skipped_updates": self.skipped_updates,
            "loop": self.loop.state_dict(),
            "rng": gather_per_rank(self._trainer, rng_state()),
            "episode_window": self.episode_stats.state_dict_window(sync=gathers(self._trainer)),
            "rng_ranks_seeded": True,  # the ranks' generators were set apart (seed_rank): restore them as they are
        }
        data = getattr(self._trainer, "datamodule", None)
        if data is not None:  # what `rl-lightning predict --ckpt_path` builds again
            checkpoint["rl_lightning"]["data_class"] = f"{type(data).__module__}.{type(data).__qualname__}"

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[Any],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Lightning's ``load_from_checkpoint``, after :func:`~rl_lightning.checkpoint.verify_checkpoint` has checked
        a local file: Lightning reads it with plain ``torch.load``, so a truncated or damaged file would surface
        torch's errors (one of which advises ``weights_only=False``, which would run code from the file) or, damaged
        inside a tensor, load wrong weights without a word."""
        if isinstance(checkpoint_path, str | Path) and "://" not in str(checkpoint_path):
            verify_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("rl_lightning")
        if state is None:
            raise ValueError("This checkpoint was not written by rl_lightning (it has no 'rl_lightning' entry).")
        if state["algorithm"] != type(self).__name__:
            raise ValueError(
                f"This checkpoint holds a {state['algorithm']} model and cannot be loaded into "
                f"{type(self).__name__}. Load it with rl_lightning.{state['algorithm']} (model.class_path)."
            )
        check_resumable(checkpoint, self._trainer, type(self).__name__)
        saved = checkpoint.get("hyper_parameters", {})
        for name in ("observation_space", "action_space"):
            ours = space_to_dict(getattr(self, name))
            if name in saved and saved[name] != ours:
                raise ValueError(
                    f"This checkpoint's model was built for the {name} {space_from_dict(saved[name])}, but this "
                    f"model has {space_from_dict(ours)}: it was trained on another environment. Use the env it was "
                    "trained on (data.env_id and wrappers), or start a new run."
                )
        self.frames = int(state["frames"])
        self.updates = int(state["updates"])
        self.episodes = int(state["episodes"])
        self.skipped_updates = int(state["skipped_updates"])
        self.loop.load_state_dict(state["loop"])
        # The saved window holds every rank's last episodes: one rank takes them back, so none counts twice.
        rank = 0 if self._trainer is None else self._trainer.global_rank
        self.episode_stats.load_state_dict_window(state["episode_window"], keep=rank == 0)
        if "rng" in state:
            set_rng_state(own_state(self._trainer, state["rng"], "random number generator states"))
            # One saved state per rank, set apart when saved: each rank goes on with its own. Otherwise (another
            # number of ranks, or a checkpoint from before ranks were set apart) on_fit_start sets them apart.
            world_size = 1 if self._trainer is None else self._trainer.world_size
            same_ranks = len(state["rng"][PER_RANK]) == world_size
            self._rng_restored = same_ranks and bool(state.get("rng_ranks_seeded", world_size == 1))


def _can_call_torch_directly(module: RLModule) -> bool:
    """Whether ``manual_backward`` and ``LightningOptimizer.step`` would only call torch, count the step and
    run this module's ``on_before_optimizer_step`` in this fit.

    That holds on one device at full precision when no callback implements ``on_before_backward``,
    ``on_after_backward`` or ``on_before_optimizer_step`` and the module overrides neither backward hook nor
    ``backward``. Lightning still dispatches those hooks to every callback, with a profiler context each:
    ~0.2 ms per step, more than the step itself of a small network, which the RL inner loop with its many
    small steps skips. Any other set-up (DDP, mixed precision, such a hook) goes through Lightning.

    The direct step uses ``LightningOptimizer._on_before_step``/``_on_after_step`` (how Lightning's manual
    optimization loop counts steps; private API of lightning 2.5-2.6, pinned in pyproject.toml). Without
    them, Lightning's path is taken.
    """
    trainer = module.trainer
    hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
    if any(is_overridden(h, cb, pl.Callback) for cb in trainer.callbacks for h in hooks):  # type: ignore[attr-defined]
        return False
    if any(
        is_overridden(h, module, pl.LightningModule) for h in ("on_before_backward", "on_after_backward", "backward")
    ):
        return False
    optimizers = module.optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    if not all(hasattr(o, "_on_before_step") and hasattr(o, "_on_after_step") for o in optimizers):
        return False
    return type(trainer.strategy) is SingleDeviceStrategy and type(trainer.precision_plugin) is Precision


def _init_frame(module: RLModule) -> FrameType:
    """The running frame of ``type(module).__init__``, the one whose arguments are the model's hyperparameters."""
    code = type(module).__init__.__code__
    frame = inspect.currentframe()
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    if frame is None:
        raise RuntimeError(f"save_rl_hyperparameters must be called while {type(module).__name__}.__init__ runs.")
    return frame

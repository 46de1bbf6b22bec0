"""``BatchSubSampler``: minibatches of random sub-trajectories of the collector batch, as in torchrl's trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning._checks import check_int
from rl_lightning.callbacks.rl_callback import RLCallback

if TYPE_CHECKING:
    from rl_lightning.module import RLModule

MASK = "mask"
"""Boolean ``[num_envs, T]`` entry marking the valid steps of a padded batch (torchrl's collector mask)."""


class BatchSubSampler(RLCallback):
    """Replaces each minibatch with ``batch_size // sub_traj_len`` random sub-trajectories of ``sub_traj_len`` steps.

    At ``on_process_optim_batch`` the sub-trajectories are drawn (uniformly, with replacement) from the whole
    prepared collector batch (``module.loop.batch``, dims ``[num_envs, T]``, advantages included), whatever
    minibatch the algorithm picked: ``batch_size`` transitions in all, as ``batch_size // sub_traj_len``
    sub-trajectories. With ``flatten=True`` (the default) they are laid end to end in one flat minibatch
    ``[batch_size]``, the layout the per-transition losses of PPO and SAC read; ``flatten=False`` keeps
    torchrl's ``[batch_size // sub_traj_len, sub_traj_len]`` for losses that read sequences (recurrent
    policies, n-step targets computed in the loss).

    Mask-aware, as torchrl's: when the batch has a boolean ``"mask"`` entry (``[num_envs, T]``, or with a
    trailing ``1``), only windows whose every step is valid are drawn. If some env has fewer consecutive valid
    steps than ``sub_traj_len``, the length shrinks to the shortest such run, but never below
    ``min_sub_traj_len`` (envs with shorter runs are then left out); with a shrunk length ``L`` the minibatch
    is ``[batch_size // L, L]``.

    Args:
        batch_size: transitions per minibatch (one optimizer step); a multiple of the sub-trajectory length.
        sub_traj_len: steps per sub-trajectory; ``0`` takes whole trajectories (``T`` steps).
        min_sub_traj_len: with a mask, the shortest length the sub-trajectories may shrink to.
        flatten: return one flat minibatch ``[batch_size]`` instead of ``[num_sub_trajectories, length]``
            (not in torchrl, whose losses take either).

    Example:
        >>> batch = TensorDict({"x": torch.arange(12.0).reshape(2, 6)}, batch_size=[2, 6])
        >>> BatchSubSampler(batch_size=4, sub_traj_len=2, flatten=False).sample(batch).batch_size
        torch.Size([2, 2])
    """

    def __init__(self, batch_size: int, sub_traj_len: int = 0, min_sub_traj_len: int = 0, flatten: bool = True) -> None:
        check_int("batch_size", batch_size, hint="It is the transitions per minibatch.")
        check_int("sub_traj_len", sub_traj_len, minimum=0, hint="Use sub_traj_len=0 to take whole trajectories.")
        check_int("min_sub_traj_len", min_sub_traj_len, minimum=0, hint="Use 0 to let the length shrink freely.")
        if sub_traj_len and batch_size % sub_traj_len:
            raise ValueError(
                f"batch_size={batch_size} is not a multiple of sub_traj_len={sub_traj_len}: a minibatch holds "
                "batch_size // sub_traj_len whole sub-trajectories. Choose a batch_size divisible by sub_traj_len."
            )
        if sub_traj_len and min_sub_traj_len > sub_traj_len:
            raise ValueError(
                f"min_sub_traj_len={min_sub_traj_len} exceeds sub_traj_len={sub_traj_len}: it is the length "
                "sub-trajectories may shrink to. Lower it or raise sub_traj_len."
            )
        self.batch_size = batch_size
        self.sub_traj_len = sub_traj_len
        self.min_sub_traj_len = min_sub_traj_len
        self.flatten = flatten
        self.samples = 0
        """Minibatches drawn so far."""
        self._windows_of: TensorDict | None = None
        self._windows: tuple[torch.Tensor, torch.Tensor, int] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(batch_size=self.batch_size, sub_traj_len=self.sub_traj_len)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data: Any = getattr(trainer, "datamodule", None)
        if hasattr(data, "num_envs") and hasattr(data, "steps_per_batch"):
            self.check_fits(data.num_envs, data.steps_per_batch)  # before any step; each batch is checked too

    def check_fits(self, num_envs: int, steps: int) -> None:
        """Raises if sub-trajectories of this size cannot be cut from a ``[num_envs, steps]`` batch."""
        length = self.sub_traj_len or steps
        if length > steps:
            raise ValueError(
                f"sub_traj_len={self.sub_traj_len} is longer than the {steps} steps per env of a collector batch "
                f"(num_envs={num_envs}). Lower sub_traj_len or raise frames_per_batch."
            )
        if self.batch_size % length:
            raise ValueError(
                f"batch_size={self.batch_size} is not a multiple of the {length} steps of a whole trajectory "
                "(sub_traj_len=0). Choose a batch_size divisible by it, or set sub_traj_len."
            )
        if self.batch_size > num_envs * steps:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {num_envs * steps} transitions of a collector batch "
                f"({num_envs} envs x {steps} steps). Lower batch_size or raise frames_per_batch."
            )

    @override
    def on_process_optim_batch(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> TensorDict:
        full = module.loop.batch
        assert full is not None, "BatchSubSampler runs inside the RL loop, which sets module.loop.batch"
        return self.sample(full)

    def sample(self, batch: TensorDict) -> TensorDict:
        """Random sub-trajectories of ``batch`` (dims ``[num_envs, T]``), ``batch_size`` transitions in all
        (flat, or ``[num_sub_trajectories, length]`` with ``flatten=False``)."""
        env, start, length = self._valid_windows(batch)
        pick = torch.randint(env.numel(), (self.batch_size // length,), device=env.device)
        time = start[pick, None] + torch.arange(length, device=env.device)
        self.samples += 1
        sub = batch[env[pick, None].expand_as(time), time]
        return sub.reshape(-1) if self.flatten else sub

    def _valid_windows(self, batch: TensorDict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(env, start, length)`` of every window that may be drawn; computed once per collector batch."""
        if self._windows is not None and self._windows_of is batch:
            return self._windows
        if batch.batch_dims != 2:
            raise ValueError(
                f"BatchSubSampler needs a batch with dims [num_envs, T]; got batch_size={tuple(batch.batch_size)}."
            )
        num_envs, steps = batch.batch_size
        self.check_fits(num_envs, steps)
        length = self.sub_traj_len or steps
        mask = batch.get(MASK, None)
        if mask is None:
            valid = torch.ones(num_envs, steps, dtype=torch.bool, device=batch.device)
        else:
            if mask.dtype != torch.bool or mask.shape[:2] != (num_envs, steps) or mask[0, 0].numel() != 1:
                raise ValueError(
                    f"The batch's 'mask' entry must be boolean with shape [{num_envs}, {steps}] (or a trailing 1); "
                    f"got dtype={mask.dtype}, shape={tuple(mask.shape)}."
                )
            valid = mask.reshape(num_envs, steps)
            runs = _longest_runs(valid)
            shortest = int(runs[runs > 0].min()) if bool((runs > 0).any()) else 0
            length = max(self.min_sub_traj_len, min(length, shortest), 1)
        counts = torch.nn.functional.pad(valid.to(torch.int32).cumsum(-1), (1, 0))
        windows = (counts[:, length:] - counts[:, :-length]) == length  # [num_envs, T - length + 1]
        env, start = windows.nonzero(as_tuple=True)
        if env.numel() == 0:
            raise ValueError(
                f"The batch's mask leaves no {length} consecutive valid steps to draw a sub-trajectory from "
                f"(sub_traj_len={self.sub_traj_len}, min_sub_traj_len={self.min_sub_traj_len}). "
                "Lower min_sub_traj_len or check the mask."
            )
        self._windows_of, self._windows = batch, (env, start, length)
        return self._windows

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.samples}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples = int(state_dict["samples"])


def _longest_runs(valid: torch.Tensor) -> torch.Tensor:
    """The longest run of consecutive ``True`` in each row of a ``[N, T]`` boolean tensor."""
    steps = torch.arange(valid.shape[-1], device=valid.device).expand_as(valid)
    last_invalid = torch.where(valid, torch.full_like(steps, -1), steps).cummax(-1).values
    return (steps - last_invalid).masked_fill(~valid, 0).max(-1).values

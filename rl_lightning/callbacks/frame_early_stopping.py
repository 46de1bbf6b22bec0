"""``FrameEarlyStopping``: Lightning's ``EarlyStopping`` with its patience counted in env frames."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from typing_extensions import override

from rl_lightning import _checks

_NEVER = 2**62
"""The parent's patience in checks: never reached, the frames decide."""


class FrameEarlyStopping(EarlyStopping):
    """Stops training once ``monitor`` has not improved for ``patience_frames`` env frames.

    Lightning's ``EarlyStopping`` counts patience in checks (validation runs), which in RL depends on
    ``val_check_interval`` and ``frames_per_batch``; this subclass counts the env frames collected
    (``module.frames``, over all ranks) since the last improvement instead. Everything else is
    ``EarlyStopping``'s: ``monitor``, ``mode``, ``min_delta``, ``stopping_threshold``, ``divergence_threshold``,
    ``check_finite``, when the check runs (after validation unless ``check_on_train_epoch_end``), the decision
    agreed across DDP ranks, ``trainer.should_stop`` and ``trainer.early_stopping_callback``.

    Args:
        monitor: the metric to watch, e.g. ``"val/episode_return"``.
        patience_frames: env frames without improvement after which training stops; the run stops at the
            first check at least this many frames after the last improvement.
        min_delta: the least change that counts as an improvement.
        verbose: log the checks' outcome.
        mode: ``"min"`` or ``"max"``: whether the metric should fall or rise.
        strict: raise if ``monitor`` is not among the logged metrics.
        check_finite: stop when the metric becomes NaN or infinite.
        stopping_threshold: stop as soon as the metric reaches this value.
        divergence_threshold: stop as soon as the metric is worse than this value.
        check_on_train_epoch_end: check at the end of the training epoch instead of after validation
            (``None``: Lightning decides from the validation schedule).
        log_rank_zero_only: log the outcome on rank 0 only.

    Example::

        FrameEarlyStopping("val/episode_return", patience_frames=50_000, mode="max")
    """

    def __init__(
        self,
        monitor: str,
        patience_frames: int,
        min_delta: float = 0.0,
        verbose: bool = False,
        mode: Literal["min", "max"] = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        hint = "Give the env frames to wait for an improvement, e.g. 50000."
        _checks.check_int("patience_frames", patience_frames, minimum=0, hint=hint)
        # (the parameter check_finite hides the function of that name)
        _checks.check_finite("min_delta", min_delta, "It is the least change that counts as an improvement, e.g. 0.0.")
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=_NEVER,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.patience_frames = patience_frames
        self.best_frames = 0
        """``module.frames`` at the last improvement."""
        self._frames = 0

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        frames = getattr(trainer.lightning_module, "frames", None)
        if frames is None:
            raise TypeError(
                f"FrameEarlyStopping counts env frames, but {type(trainer.lightning_module).__name__} has no `frames` "
                "counter. Use it with an rl_lightning RLModule, or Lightning's EarlyStopping elsewhere."
            )
        self._frames = int(frames)
        super()._run_early_stopping_check(trainer)

    @override
    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        if should_stop:
            return should_stop, reason
        if self.wait_count == 0:  # the parent just recorded an improvement
            self.best_frames = self._frames
        elif self._frames - self.best_frames >= self.patience_frames:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self._frames - self.best_frames} "
                f"frames (patience_frames={self.patience_frames}). Best score: {self.best_score:.3f}. "
                "Signaling Trainer to stop."
            )
        return False, reason

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "patience_frames": self.patience_frames, "best_frames": self.best_frames}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.patience_frames = int(state_dict["patience_frames"])
        self.best_frames = int(state_dict["best_frames"])

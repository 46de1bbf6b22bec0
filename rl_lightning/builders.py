"""Builders for use outside the CLI: a ready Trainer, or trainer + model + data from a config in one call."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger

from rl_lightning.compat import check_callbacks, check_logger_packages, check_trainer

if TYPE_CHECKING:
    from rl_lightning.data import RLDataModule
    from rl_lightning.module import RLModule

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": -1,  # the data's total_frames ends the run
    "num_sanity_val_steps": 0,  # a sanity evaluation of an untrained policy only costs time
    "log_every_n_steps": 10,  # a training step is a whole collector batch
    "check_val_every_n_epoch": None,  # validate every `val_check_interval` batches within the single epoch
    "val_check_interval": 10,
}
"""Trainer arguments that suit RL, used by the CLI and :func:`make_trainer` unless overridden."""


def make_trainer(**kwargs: Any) -> pl.Trainer:
    """A ``lightning.Trainer`` with :data:`TRAINER_DEFAULTS`, overridden by ``kwargs``.

    Stops before building it on a logger whose package is missing (the message names the extra to install) and on
    a Lightning callback that cannot work in an RL fit, and once built on a strategy, precision or device count an
    RL fit cannot use, before a fit's launcher starts any DDP process (see :mod:`rl_lightning.compat`).

    Example:
        >>> trainer = make_trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
        >>> trainer.val_check_interval
        10
    """
    logger = kwargs.get("logger")
    loggers = logger if isinstance(logger, list | tuple) else [logger]
    check_logger_packages((type(one) for one in loggers if isinstance(one, Logger)), where="logger")
    callbacks = kwargs.get("callbacks")
    check_callbacks(callbacks if isinstance(callbacks, list | tuple) else [callbacks] if callbacks else [])
    trainer = pl.Trainer(**{**TRAINER_DEFAULTS, **kwargs})
    check_trainer(trainer)
    return trainer


def build(
    config: str | Path | None = None, overrides: list[str] | None = None, algorithm: str | None = None
) -> tuple[pl.Trainer, RLModule, RLDataModule]:
    """Trainer, model and data from a config file and CLI-style overrides, exactly as ``rl-lightning fit`` builds them.

    Args:
        config: a YAML config such as ``configs/ppo.yaml``; ``None`` starts from the defaults.
        overrides: CLI-style overrides, e.g. ``["--data.env_id=Acrobot-v1", "--model.lr=3e-4"]``.
        algorithm: the model class (``"PPO"`` or an import path) when the config does not name one.

    Example::

        trainer, model, data = build("configs/ppo.yaml", ["--data.total_frames=20000"])
        trainer, model, data = build(algorithm="PPO", overrides=["--data.env_id=Acrobot-v1"])
        trainer.fit(model, datamodule=data)
    """
    from rl_lightning.cli import cli

    args = [f"--config={config}"] if config is not None else []
    if algorithm is not None:
        args.append(f"--model={algorithm}")
    args += list(overrides or [])
    built = cli(args, run=False)
    return built.trainer, built.model, built.datamodule

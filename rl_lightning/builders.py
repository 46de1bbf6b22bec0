"""A Trainer with the defaults that suit RL, for use outside the CLI (:func:`rl_lightning.build` builds trainer, model
and data from a config, through the CLI's parser: :mod:`rl_lightning.cli`)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger

from rl_lightning.compat import check_callbacks, check_logger_packages, check_trainer

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

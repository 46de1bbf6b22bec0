"""What of Lightning cannot work in an RL fit, checked before the first env step: callbacks, logger extras, and
the trainer's strategy, precision and devices.

Most of Lightning's callbacks work unchanged (``ModelCheckpoint``, ``EarlyStopping``, ``Timer``, progress bars,
``LearningRateMonitor``, ``EMAWeightAveraging``...). The few that cannot are listed in :data:`UNSUPPORTED_CALLBACKS`
with the reason, and :func:`check_callbacks` stops a fit that uses one. Loggers whose package is missing are
caught by :func:`check_logger_packages` with the extra to install. :func:`check_trainer` stops a strategy,
precision or device count an RL fit cannot use; :func:`~rl_lightning.make_trainer` and the CLI call it on the
trainer they build, before a fit's launcher starts any DDP process, and the fit calls it again for a trainer built
by hand.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BatchSizeFinder, LearningRateFinder, StochasticWeightAveraging
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    Strategy,
    XLAStrategy,
)
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

UNSUPPORTED_CALLBACKS: dict[type[pl.Callback], str] = {
    LearningRateFinder: (
        "it sweeps the learning rate over optimizer steps of automatic optimization and picks the steepest fall "
        "of the loss, but an RLModule optimizes manually inside training_step, each collector batch comes from "
        "a different policy, and RL losses do not fall as the policy improves: the curve says nothing about the "
        "learning rate, and the sweep itself steps the envs and changes the run. Remove it from "
        "trainer.callbacks and compare runs with different model lr values on val/episode_return."
    ),
    BatchSizeFinder: (
        "it grows the DataLoader batch size until memory runs out, but an RL training item is one whole "
        "collector batch (the DataLoader's batch size is None) and the sizes that matter (data.frames_per_batch, "
        "the model's batch_size) change what the algorithm learns, not only its memory use. "
        "Remove it from trainer.callbacks and set those sizes in the config."
    ),
    StochasticWeightAveraging: (
        "it averages the weights once per training epoch from swa_epoch_start on and swaps in an SWALR scheduler, "
        "but an RL fit is a single epoch of collector batches (max_epochs=-1) optimized manually, so it would "
        "average one set of weights and its scheduler would never step. Use "
        "lightning.pytorch.callbacks.EMAWeightAveraging (or WeightAveraging), which average after every "
        "collector batch, instead."
    ),
}
"""Lightning callbacks that cannot work in an RL fit (and their subclasses), with the reason and the alternative."""

LOGGER_EXTRAS: dict[type[Logger], tuple[tuple[str, ...], str]] = {
    WandbLogger: (("wandb",), "wandb"),
    MLFlowLogger: (("mlflow",), "mlflow"),
    TensorBoardLogger: (("tensorboard", "tensorboardX"), "tensorboard"),
}
"""Logger class → (importable packages, any one of which it needs; the rl-lightning extra that installs them)."""


def check_callbacks(callbacks: Iterable[pl.Callback]) -> None:
    """Raises ``ValueError`` if a callback of :data:`UNSUPPORTED_CALLBACKS` (or a subclass) is among ``callbacks``.

    Example:
        >>> from lightning.pytorch.callbacks import LearningRateFinder, ModelCheckpoint
        >>> check_callbacks([ModelCheckpoint()])
        >>> check_callbacks([LearningRateFinder()])
        Traceback (most recent call last):
        ...
        ValueError: LearningRateFinder cannot be used in an RL fit: it sweeps the learning rate ...
    """
    check_callback_classes(type(callback) for callback in callbacks)


def check_callback_classes(classes: Iterable[type]) -> None:
    """:func:`check_callbacks` for callback classes (e.g. resolved from a config's ``class_path`` entries)."""
    for callback_class in classes:
        for cls, reason in UNSUPPORTED_CALLBACKS.items():
            if issubclass(callback_class, cls):
                raise ValueError(f"{callback_class.__name__} cannot be used in an RL fit: {reason}")


def missing_logger_extra(logger_class: type) -> str | None:
    """The install command for ``logger_class``'s package if none of its packages can be imported, else ``None``."""
    for cls, (packages, extra) in LOGGER_EXTRAS.items():
        if issubclass(logger_class, cls):
            if not any(_importable(name) for name in packages):
                return f"pip install 'rl-lightning[{extra}]'"
            return None
    return None


def check_logger_packages(loggers: Iterable[type], where: str = "trainer.logger") -> None:
    """Raises ``ModuleNotFoundError``, naming the extra to install, for a logger class whose package is missing.

    Args:
        loggers: logger classes (e.g. ``type(WandbLogger(...))``, or classes resolved from a config's class paths).
        where: how the caller names the setting in the message.
    """
    for logger_class in loggers:
        command = missing_logger_extra(logger_class)
        if command is not None:
            packages, _ = next(v for k, v in LOGGER_EXTRAS.items() if issubclass(logger_class, k))
            raise ModuleNotFoundError(
                f"{where} is {logger_class.__module__}.{logger_class.__qualname__}, which needs the package "
                f"{' or '.join(repr(p) for p in packages)}, and it is not installed. Install it with {command}, "
                "or choose another logger (lightning.pytorch.loggers.CSVLogger needs nothing more)."
            )


def classes_in_config(value: Any) -> list[type]:
    """The classes named by ``class_path`` entries of a parsed config value (one entry or a list), e.g.
    ``trainer.logger`` or ``trainer.callbacks``."""
    found: list[type] = []
    if isinstance(value, list | tuple):
        for item in value:
            found += classes_in_config(item)
        return found
    class_path = value.get("class_path") if hasattr(value, "get") else None
    if isinstance(class_path, str) and "." in class_path:
        module_name, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            return found  # jsonargparse reports a class path it cannot resolve itself
        if isinstance(cls, type):
            found.append(cls)
    return found


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None or has no __spec__
        return False


SUPPORTED_PRECISION = ("32-true", "32", "bf16-mixed", "16-mixed")
"""Precisions an RL fit trains with: full precision, or mixed precision with float32 weights."""


_SHARDING = (
    "it shards parameters and optimizer state across devices, while the RL algorithms read and copy whole "
    "parameters under manual optimization (target networks, SAC's critics in the actor loss)"
)
UNSUPPORTED_STRATEGIES: dict[type[Strategy], str] = {
    # They subclass DDPStrategy or SingleDeviceStrategy, so they are named before those are allowed.
    DeepSpeedStrategy: f"{_SHARDING} (ZeRO), and its engine takes over backward and the optimizer steps",
    XLAStrategy: (
        "it trains on XLA devices (TPUs) in processes started by torch_xla's multiprocessing, from which the RL "
        "counters and replay buffers do not come back, and rl_lightning is not built for XLA devices"
    ),
    SingleDeviceXLAStrategy: "it trains on an XLA device (a TPU), and rl_lightning is not built for XLA devices",
}
"""Strategies derived from the allowed ones that an RL fit cannot use (and their subclasses), with the reason."""

_START_METHOD_ALIASES = {"spawn": "ddp_spawn", "fork": "ddp_fork or ddp_notebook"}


def unsupported_strategy_reason(strategy_class: type) -> str | None:
    """Why an RL fit cannot train under ``strategy_class``, or ``None`` if it can (one device or DDP).

    Example:
        >>> from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
        >>> unsupported_strategy_reason(DDPStrategy) is None
        True
        >>> unsupported_strategy_reason(DeepSpeedStrategy)[:50]
        'it shards parameters and optimizer state across de'
    """
    for cls, reason in UNSUPPORTED_STRATEGIES.items():
        if issubclass(strategy_class, cls):
            return reason
    if not issubclass(strategy_class, SingleDeviceStrategy | DDPStrategy):
        return _SHARDING
    return None


def check_trainer(trainer: pl.Trainer) -> None:
    """Raises ``ValueError`` for a strategy, precision or device count an RL fit cannot use, naming what to use.

    Call it on a built trainer before its fit: under DDP the fit's own check runs only after Lightning's launcher
    has started the worker processes, and each of them then fails on its own.

    - Strategies: one device or DDP launched as subprocesses of the script, or under torchrun or SLURM (``ddp``,
      ``ddp_find_unused_parameters_true``, ...). Sharded strategies (FSDP, DeepSpeed, model parallel) split
      parameters across devices, while the algorithms read and copy whole parameters under manual optimization
      (target networks, SAC's detached critics). Strategies started with ``torch.multiprocessing`` (``ddp_spawn``,
      ``ddp_fork``, ``ddp_notebook``, XLA) send only the weights and ``callback_metrics`` back to the main
      process, so its model would keep counters of zero (frames, updates, batches) and an empty replay buffer.
    - Precision: ``32-true``, ``bf16-mixed`` or ``16-mixed``. With ``*-true`` half (or double) precision the
      weights change dtype but the collector's float32 observations do not.
    - Devices: on CPU each device is a process collecting its own envs; more processes than cores only contend.
    """
    strategy = trainer.strategy
    reason = unsupported_strategy_reason(type(strategy))
    if reason is not None:
        raise ValueError(
            f"strategy={type(strategy).__name__} cannot train an RLModule: {reason}. Use trainer.strategy: ddp (one "
            "process per device, gradients all-reduced), or a single device."
        )
    if isinstance(strategy.launcher, _MultiProcessingLauncher):
        start_method = getattr(strategy, "_start_method", "spawn")  # DDPStrategy's; Lightning has no public one
        alias = f" ({_START_METHOD_ALIASES[start_method]})" if start_method in _START_METHOD_ALIASES else ""
        raise ValueError(
            f"strategy={type(strategy).__name__}(start_method={start_method!r}){alias} cannot train an "
            "RLModule: it starts its processes with torch.multiprocessing, and Lightning sends only the weights "
            "and callback_metrics back to this process, while the RL counters (frames, updates, batches) and "
            "replay buffers live in the worker processes and do not come back, so a later save_checkpoint or fit "
            "here would start the frame budget over. Use trainer.strategy: ddp, which Lightning launches as "
            "subprocesses of the script (or under torchrun or SLURM)."
        )
    precision = str(trainer.precision)
    if precision not in SUPPORTED_PRECISION:
        raise ValueError(
            f"precision={precision!r} is not supported in an RL fit: it changes the networks' weights to another "
            "dtype, while the collector feeds float32 observations. Use trainer.precision: bf16-mixed (or 16-mixed "
            "on a GPU) for mixed precision with float32 weights, or 32-true."
        )
    cores = os.cpu_count() or 1
    if trainer.accelerator.__class__.__name__ == "CPUAccelerator" and trainer.num_devices > cores:
        raise ValueError(
            f"devices={trainer.num_devices} on the CPU starts {trainer.num_devices} processes, but this machine has "
            f"{cores} CPU cores. Use trainer.devices: {cores} or fewer (each process collects from its own "
            "data.num_envs envs), or a GPU accelerator."
        )

"""The ``rl-lightning`` command: a LightningCLI with the data's spaces linked into the model.

rl-lightning fit --config configs/ppo.yaml
rl-lightning fit --config configs/ppo.yaml --data.env_id Acrobot-v1 --model.lr 3e-4
rl-lightning validate --config configs/ppo.yaml --ckpt_path runs/ppo/checkpoints/last.ckpt
rl-lightning predict --ckpt_path runs/ppo/checkpoints/last.ckpt --video true
rl-lightning export --ckpt_path runs/ppo/checkpoints/last.ckpt --output policy.onnx
rl-lightning plot runs/ppo/version_0 --output curve.png

``validate``, ``test`` and ``predict`` with a ``--ckpt_path`` need no ``--config``: the model and the data come from
the checkpoint's saved hyperparameters, and a config or overrides given too change them (e.g. ``--data.env_id``).

From Python, :func:`build` makes the trainer, model and data of a config exactly as the command does.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from rl_lightning import algorithms, callbacks
from rl_lightning.builders import TRAINER_DEFAULTS
from rl_lightning.callbacks.episode_writer import EpisodeWriter, check_episodes_path
from rl_lightning.checkpoint import find_last_checkpoint, verify_checkpoint
from rl_lightning.compat import check_callback_classes, check_logger_packages, check_trainer, classes_in_config
from rl_lightning.data import LIGHTNING_WARNINGS_BY_DESIGN, RLDataModule
from rl_lightning.export import checkpoint_model_class
from rl_lightning.export import main as export_main
from rl_lightning.module import RLModule
from rl_lightning.recording import require_video_extra


class RLSaveConfigCallback(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback``, also for loggers without a local directory (MLflow with a database or
    server store): the config then goes to the run as the artifact ``config.yaml`` instead of failing."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":  # rl-lightning predict writes its episodes beside the checkpoint, no run directory
            return
        if self.save_to_log_dir and trainer.log_dir is None:
            self.save_to_log_dir = False
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = trainer.logger
        if isinstance(logger, MLFlowLogger) and logger.save_dir is None and logger.run_id:
            config = self.parser.dump(self.config, skip_none=False)
            logger.experiment.log_text(logger.run_id, config, self.config_filename)


class RLLightningCLI(LightningCLI):
    """LightningCLI for an :class:`~rl_lightning.RLModule` (chosen by ``model.class_path``) and an
    :class:`~rl_lightning.RLDataModule` (``data.*``).

    Before anything is built it stops on a logger whose package is missing (naming the extra to install) and on
    a Lightning callback that cannot work in an RL fit, and once the trainer is built on a strategy, precision or
    device count an RL fit cannot use (:mod:`rl_lightning.compat`): before a fit's launcher starts any DDP process
    and before anything is written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) < 3:  # LightningCLI's third argument is save_config_callback
            kwargs.setdefault("save_config_callback", RLSaveConfigCallback)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=None,
            help="torch.set_num_threads for the run; small networks on few cores run fastest with 1 "
            "(null keeps torch's default).",
        )
        parser.add_argument(
            "--output",
            type=str | None,
            default=None,
            help="predict only: the .csv or .json file of the episodes' returns and lengths (default: "
            "<checkpoint>-episodes.csv beside the checkpoint).",
        )
        parser.add_argument(
            "--video",
            type=bool,
            default=False,
            help="predict only: record the first evaluation env's episodes to an mp4 beside the output (the video "
            "extra).",
        )
        # The data is an RLDataModule unless the config names a subclass (data.class_path: an OfflineDataModule, a
        # TorchRLDataModule); `data: {env_id: ...}` and `--data.env_id` keep meaning RLDataModule's arguments.
        parser.set_defaults({"data": {"class_path": f"{RLDataModule.__module__}.{RLDataModule.__name__}"}})
        parser.link_arguments(
            "data", "model.init_args.observation_space", compute_fn=_observation_space, apply_on="instantiate"
        )
        parser.link_arguments("data", "model.init_args.action_space", compute_fn=_action_space, apply_on="instantiate")

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        listed = list(sys.argv[1:] if args is None else args) if isinstance(args, list | None) else None
        self._checkpoint_applied = False
        if listed and listed[0] in CHECKPOINT_SUBCOMMANDS:
            ckpt_path = _option(listed, "--ckpt_path")
            if ckpt_path and Path(ckpt_path).is_file():
                verify_checkpoint(ckpt_path)
                # The checkpoint's model and data first: a --config or override after them changes them.
                args = [listed[0], *checkpoint_arguments(ckpt_path), *listed[1:]]
                self._checkpoint_applied = True
        super().parse_arguments(parser, args)
        # LightningCLI reads a --ckpt_path file's hyperparameters right after this, with plain torch.load: a damaged
        # file would surface torch's errors, one of which advises weights_only=False (it would run the file's code).
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            verify_checkpoint(ckpt_path)

    def _parse_ckpt_path(self) -> None:
        """Lightning's (2.5-2.6, private; tests/test_inference.py fails without this override) applies the model's
        saved hyperparameters over the parsed config, so a checkpoint's values would replace the user's overrides,
        and fails on a checkpoint of a model fitted from Python (it has no saved class path). Where
        :meth:`parse_arguments` has put the checkpoint's model and data under the user's arguments already, it is
        skipped."""
        if not getattr(self, "_checkpoint_applied", False):
            super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        threads = config.get("torch_threads") if config is not None else None
        if threads is not None:
            if threads < 1:
                raise ValueError(f"torch_threads={threads} is invalid: expected an integer >= 1, or null.")
            torch.set_num_threads(threads)
        if config is not None and self.subcommand != "predict":
            for name in ("output", "video"):
                if config.get(name):
                    raise ValueError(
                        f"--{name}={config.get(name)!r} is an option of rl-lightning predict, not of "
                        f"{self.subcommand}. Remove it, or run rl-lightning predict."
                    )
        elif config is not None and config.get("output") is not None:
            check_episodes_path(config.get("output"))  # before anything runs or is written
        if config is not None and self.subcommand == "predict" and config.get("video"):
            require_video_extra("rl-lightning predict --video true")
        trainer = config.get("trainer") if config is not None else None
        if trainer is not None and self.subcommand == "predict":
            # Scoring a checkpoint writes its episodes, not a run: no logger's directory, no checkpoints, unless asked.
            if trainer.get("logger") is None:
                trainer["logger"] = False
            if trainer.get("enable_checkpointing") is None:
                trainer["enable_checkpointing"] = False
        if trainer is not None:
            check_logger_packages(classes_in_config(trainer.get("logger")))
            if self.subcommand in ("fit", None):  # None: built to be fitted from Python
                check_callback_classes(classes_in_config(trainer.get("callbacks")))

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        check_trainer(trainer)  # the fit checks it too, but under DDP only in every worker process it started
        return trainer

    def before_fit(self) -> None:
        _resume_from_last(self)

    def before_predict(self) -> None:
        """Adds an :class:`~rl_lightning.callbacks.EpisodeWriter` of ``--output`` and ``--video``, unless the trainer's
        callbacks have one."""
        callbacks: list[Any] = self.trainer.callbacks  # type: ignore[attr-defined]  # set dynamically by Lightning
        if not any(isinstance(cb, EpisodeWriter) for cb in callbacks):
            config = self.config[self.subcommand]
            callbacks.append(EpisodeWriter(config.get("output"), video=bool(config.get("video"))))


CHECKPOINT_SUBCOMMANDS = ("validate", "test", "predict")
"""The subcommands whose ``--ckpt_path`` alone is enough: the model and data come from the checkpoint."""


def _option(args: list[str], name: str) -> str | None:
    """The value of ``name`` in CLI-style ``args`` (``--name value`` or ``--name=value``; the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
    return value


def checkpoint_arguments(ckpt_path: str | Path) -> list[str]:
    """``--model`` and ``--data`` arguments that build the model and data a checkpoint was trained with, from its
    saved hyperparameters (the model's class from its ``rl_lightning`` entry; the spaces are linked from the data, so
    a checkpoint of another env is refused when it loads, naming both).

    Raises:
        ValueError: for a checkpoint rl_lightning did not write.
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    model_class = checkpoint_model_class(checkpoint, ckpt_path)
    init_args = {
        k: v
        for k, v in checkpoint.get("hyper_parameters", {}).items()
        if not k.startswith("_") and k not in ("observation_space", "action_space")
    }
    arguments = [
        "--model="
        + json.dumps({"class_path": f"{model_class.__module__}.{model_class.__name__}", "init_args": init_args})
    ]
    saved = checkpoint.get("datamodule_hyper_parameters", {})
    data = {k: v for k, v in saved.items() if not k.startswith("_")}
    if data:
        data_class = saved.get("_class_path") or checkpoint["rl_lightning"].get("data_class")
        arguments.append("--data=" + json.dumps({"class_path": data_class, "init_args": data} if data_class else data))
    return arguments


def _resume_from_last(cli: RLLightningCLI) -> None:
    """``--ckpt_path last``: the newest ``last.ckpt`` of this experiment's earlier runs (each run logs to a new
    version directory, where Lightning alone would not find it); Lightning resolves it when none is found."""
    config = cli.config_init[cli.subcommand]
    if config.get("ckpt_path") == "last":
        found = find_last_checkpoint(cli.trainer)
        if found is not None:
            rank_zero_info(f"Resuming from {found} (--ckpt_path last).")
            config["ckpt_path"] = str(found)


def _observation_space(data: RLDataModule) -> dict[str, Any]:
    return data.spaces["observation"]


def _action_space(data: RLDataModule) -> dict[str, Any]:
    return data.spaces["action"]


def _import_built_ins() -> None:
    """Imports the built-in algorithms and callbacks: jsonargparse finds a short class name (``--model PPO``,
    ``class_path: LogScalar``) among the subclasses imported so far, and the packages import theirs only on use."""
    for package in (algorithms, callbacks):
        for name in package.__all__:
            getattr(package, name)


def cli(args: list[str] | None = None, run: bool = True) -> RLLightningCLI:
    """Builds (and with ``run=True`` runs) the CLI on ``args`` (``sys.argv`` when ``None``)."""
    _import_built_ins()
    with warnings.catch_warnings():
        # Explicit args are the point of calling this from Python; the caller's own argv is not ours.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        for pattern in LIGHTNING_WARNINGS_BY_DESIGN:  # the fit runs in here with run=True
            warnings.filterwarnings("ignore", message=pattern)
        return RLLightningCLI(
            RLModule,
            RLDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )


def build(
    config: str | Path | None = None, overrides: list[str] | None = None, algorithm: str | None = None
) -> tuple[Trainer, RLModule, RLDataModule]:
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
    args = [f"--config={config}"] if config is not None else []
    if algorithm is not None:
        args.append(f"--model={algorithm}")
    args += list(overrides or [])
    built = cli(args, run=False)
    return built.trainer, built.model, built.datamodule


def main() -> None:
    """Entry point of ``rl-lightning`` and ``python -m rl_lightning``; ``rl-lightning plot ...`` draws a learning
    curve (:mod:`rl_lightning.plot`), ``rl-lightning export ...`` writes a checkpoint's policy to ONNX or TorchScript
    (:mod:`rl_lightning.export`)."""
    if sys.argv[1:2] == ["plot"]:
        from rl_lightning.plot import main as plot_main

        plot_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["export"]:
        export_main(sys.argv[2:])
        return
    cli()

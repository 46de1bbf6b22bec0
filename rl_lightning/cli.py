"""The ``rl-lightning`` command: a LightningCLI with the data's spaces linked into the model.

rl-lightning fit --config configs/ppo.yaml
rl-lightning fit --config configs/ppo.yaml --data.env_id Acrobot-v1 --model.lr 3e-4
rl-lightning validate --config configs/ppo.yaml --ckpt_path runs/ppo/checkpoints/last.ckpt
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rl_lightning.builders import TRAINER_DEFAULTS
from rl_lightning.data import RLDataModule
from rl_lightning.module import RLModule


class RLLightningCLI(LightningCLI):
    """LightningCLI for an :class:`~rl_lightning.RLModule` (chosen by ``model.class_path``) and an
    :class:`~rl_lightning.RLDataModule` (``data.*``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=None,
            help="torch.set_num_threads for the run; small networks on few cores run fastest with 1 "
            "(null keeps torch's default).",
        )
        parser.link_arguments(
            "data", "model.init_args.observation_space", compute_fn=_observation_space, apply_on="instantiate"
        )
        parser.link_arguments("data", "model.init_args.action_space", compute_fn=_action_space, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        threads = config.get("torch_threads") if config is not None else None
        if threads is not None:
            if threads < 1:
                raise ValueError(f"torch_threads={threads} is invalid: expected an integer >= 1, or null.")
            torch.set_num_threads(threads)


def _observation_space(data: RLDataModule) -> dict[str, Any]:
    return data.spaces["observation"]


def _action_space(data: RLDataModule) -> dict[str, Any]:
    return data.spaces["action"]


def cli(args: list[str] | None = None, run: bool = True) -> RLLightningCLI:
    """Builds (and with ``run=True`` runs) the CLI on ``args`` (``sys.argv`` when ``None``)."""
    with warnings.catch_warnings():
        # Explicit args are the point of calling this from Python; the caller's own argv is not ours.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        return RLLightningCLI(
            RLModule,
            RLDataModule,
            subclass_mode_model=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )


def main() -> None:
    """Entry point of ``rl-lightning`` and ``python -m rl_lightning``."""
    cli()

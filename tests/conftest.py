from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from rl_lightning import PPO, RLDataModule, make_trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fast_torch() -> None:
    torch.set_num_threads(1)


def quiet_trainer(tmp_path: Path, **overrides: Any) -> pl.Trainer:
    """A CPU trainer for tests: no logger, checkpoints, progress bar or summary unless overridden."""
    kwargs: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        **overrides,
    }
    return make_trainer(**kwargs)


def tiny_ppo_run(
    tmp_path: Path,
    data: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    **trainer: Any,
) -> tuple[pl.Trainer, PPO, RLDataModule]:
    """A small PPO run on CartPole: 4 envs x 16 steps per batch, 4 batches, tiny networks."""
    pl.seed_everything(0)
    datamodule = RLDataModule(
        **{
            "env_id": "CartPole-v1",
            "num_envs": 4,
            "frames_per_batch": 64,
            "total_frames": 256,
            "eval_episodes": 2,
            **(data or {}),
        }
    )
    module = PPO(
        datamodule.observation_space,
        datamodule.action_space,
        **{"n_epochs": 2, "minibatch_size": 32, "hidden_sizes": [16], **(model or {})},
    )
    return quiet_trainer(tmp_path, **{"val_check_interval": 2, **trainer}), module, datamodule

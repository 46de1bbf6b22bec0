from __future__ import annotations

import os
import random
import socket
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


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's default scheduler gives each worker a run of consecutive tests at once (a quarter of its share):
    # with the slow tests first (below) one worker would get them all. One at a time, a free worker takes the next.
    if getattr(config.option, "maxschedchunk", 0) is None:  # pytest-xdist installed and --maxschedchunk not given
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Learning tests first, then the other ``slow`` ones (real processes, compiling), then the rest, each group in
    file order: with ``pytest -n 2`` the workers start on the longest tests, and the short ones fill the gaps at
    the end instead of one long test finishing last alone."""
    items.sort(key=lambda item: (item.get_closest_marker("learning") is None, item.get_closest_marker("slow") is None))


# Lightning's DDP launcher takes MASTER_PORT from the environment, or else a port the OS hands out for an instant
# (bind to port 0, close), which rank 0 binds again when it sets up the process group: two test processes
# launching DDP at once can be handed the same one. Each test gets a free port of its own instead, from a range
# that is this pytest-xdist worker's alone, below the kernel's ephemeral range (32768-60999 by default) where the
# OS picks ports.
_PORT_RANGE = range(20000, 32768)


def _worker_ports() -> range:
    """This worker's slice of ``_PORT_RANGE`` (all of it without pytest-xdist)."""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(_PORT_RANGE) // count
    return _PORT_RANGE[index * size : (index + 1) * size]


_ports = _worker_ports()
_next_port = random.randrange(len(_ports))  # another test session on the machine most likely starts elsewhere


def _free_port() -> int:
    global _next_port
    for _ in range(len(_ports)):
        port = _ports[_next_port % len(_ports)]
        _next_port += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("", port))
            except OSError:  # in use, or in TIME_WAIT after an earlier run
                continue
        return port
    raise RuntimeError(f"no free port in {_ports} for a DDP run")


@pytest.fixture(autouse=True)
def _own_master_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """MASTER_PORT for any DDP run the test starts (its processes inherit the environment)."""
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))


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
        **{"n_epochs": 2, "batch_size": 32, "hidden_sizes": [16], **(model or {})},
    )
    return quiet_trainer(tmp_path, **{"val_check_interval": 2, **trainer}), module, datamodule

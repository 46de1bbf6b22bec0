"""Learning tests: the algorithms reach reward thresholds with fixed seeds. Select with ``-m learning``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rl_lightning.cli import RLLightningCLI, cli
from tests.conftest import ROOT


def fit_config(name: str, tmp_path: Path, *extra: str) -> RLLightningCLI:
    """``rl-lightning fit --config configs/<name> *extra``, the config as shipped, logging under ``tmp_path``."""
    args = [f"--config={ROOT / 'configs' / name}", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    return cli(["fit", *args, "--trainer.enable_progress_bar=false", *extra])


def stop_at(threshold: float) -> str:
    """A CLI override that ends the fit at the first evaluation whose return exceeds ``threshold``."""
    stop = {
        "class_path": "lightning.pytorch.callbacks.EarlyStopping",
        "init_args": {
            "monitor": "val/episode_return",
            "mode": "max",
            "stopping_threshold": threshold,
            "patience": 10**6,
            "check_on_train_epoch_end": False,
        },
    }
    return f"--trainer.callbacks+={json.dumps(stop)}"


@pytest.mark.learning
def test_ppo_solves_cartpole_from_the_default_config(tmp_path: Path) -> None:
    run = fit_config("ppo.yaml", tmp_path)
    assert run.trainer.callback_metrics["val/episode_return"] >= 475.0
    assert run.model.frames < run.datamodule.total_frames  # solved before the budget ran out


@pytest.mark.learning
def test_sac_reaches_minus_200_on_pendulum_within_20000_frames(tmp_path: Path) -> None:
    # the run ends once an evaluation passes -200 (about 5,000 frames in): the frames after it cannot change the
    # outcome, and they took three quarters of the test's time
    run = fit_config("sac.yaml", tmp_path, stop_at(-200.0))
    with open(Path(run.trainer.logger.log_dir) / "metrics.csv") as f:
        evaluations = [
            (float(r["step"]), float(r["val/episode_return"])) for r in csv.DictReader(f) if r["val/episode_return"]
        ]
    assert any(frames <= 20_000 and value >= -200.0 for frames, value in evaluations), evaluations

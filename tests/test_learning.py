"""Learning tests: the algorithms reach reward thresholds with fixed seeds. Select with ``-m learning``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rl_lightning.cli import RLLightningCLI, cli
from tests.conftest import ROOT


def fit_config(name: str, tmp_path: Path) -> RLLightningCLI:
    """``rl-lightning fit --config configs/<name>``, exactly as shipped, logging under ``tmp_path``."""
    args = [f"--config={ROOT / 'configs' / name}", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    return cli(["fit", *args, "--trainer.enable_progress_bar=false"])


@pytest.mark.learning
def test_ppo_solves_cartpole_from_the_default_config(tmp_path: Path) -> None:
    run = fit_config("ppo.yaml", tmp_path)
    assert run.trainer.callback_metrics["val/episode_return"] >= 475.0
    assert run.model.frames < run.datamodule.total_frames  # solved before the budget ran out


@pytest.mark.learning
def test_sac_reaches_minus_200_on_pendulum_within_20000_frames(tmp_path: Path) -> None:
    run = fit_config("sac.yaml", tmp_path)
    with open(Path(run.trainer.logger.log_dir) / "metrics.csv") as f:
        evaluations = [
            (float(r["step"]), float(r["val/episode_return"])) for r in csv.DictReader(f) if r["val/episode_return"]
        ]
    assert any(frames <= 20_000 and value >= -200.0 for frames, value in evaluations), evaluations

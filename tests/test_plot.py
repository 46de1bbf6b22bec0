"""``rl-lightning plot``: learning-curve PNGs from the metrics.csv of a real (tiny) fit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from rl_lightning import LogValidationReward
from rl_lightning.cli import main as cli_main
from rl_lightning.plot import DPI, FIGSIZE, main, read_curves
from tests.conftest import tiny_ppo_run

SIZE = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The log directory of a tiny PPO fit: 4 batches of 64 frames, validation every 2, eval every 128 frames."""
    torch.set_num_threads(1)
    tmp_path = tmp_path_factory.mktemp("run")
    logger = CSVLogger(tmp_path, name="ppo")
    trainer, model, data = tiny_ppo_run(
        tmp_path, logger=logger, log_every_n_steps=1, callbacks=[LogValidationReward(interval_frames=128)]
    )
    trainer.fit(model, datamodule=data)
    return Path(logger.log_dir)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_of_the_chosen_metrics(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "curve.png"
    written = main([str(run_dir / "metrics.csv"), "--metrics", "val/episode_return", "rollout/episode_return",
                    "--output", str(out)])  # fmt: skip
    assert written == out and _is_png(out)
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == SIZE


def test_plot_from_a_run_dir_through_the_command(run_dir: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(sys, "argv", ["rl-lightning", "plot", str(run_dir.parent)])  # finds version_0/metrics.csv
    cli_main()
    out = run_dir / "learning_curve.png"
    assert _is_png(out)
    with Image.open(out) as image:
        assert image.size == SIZE


def test_curves_use_frames_as_x_and_skip_empty_cells(run_dir: Path) -> None:
    curves = read_curves(run_dir / "metrics.csv")  # the defaults this log has
    assert list(curves) == ["val/episode_return", "eval/episode_return", "rollout/episode_return"]
    assert curves["val/episode_return"][0] == [128.0, 256.0]  # validation every 2 batches of 64 frames
    assert curves["eval/episode_return"][0] == [128.0, 256.0]
    steps, values = curves["rollout/episode_return"]
    assert steps == sorted(steps) and set(steps) <= {64.0, 128.0, 192.0, 256.0} and len(values) == len(steps)


def test_missing_file_and_metric_give_clear_errors(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"rl-lightning plot: error: .*nowhere\.csv' does not exist"):
        main([str(tmp_path / "nowhere.csv")])
    with pytest.raises(SystemExit, match=r"No metrics\.csv under"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit) as raised:
        main([str(run_dir), "--metrics", "val/episode_return", "val/reward"])
    message = str(raised.value)
    assert "no column 'val/reward'" in message
    assert "Available columns: " in message and "val/episode_return" in message and "train/loss" in message


def test_missing_matplotlib_names_the_extra(run_dir: Path, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a missing package looks like to `import`
    with pytest.raises(SystemExit, match=r"pip install 'rl-lightning\[plot\]'"):
        main([str(run_dir)])

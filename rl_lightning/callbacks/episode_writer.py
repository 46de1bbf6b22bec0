"""``EpisodeWriter``: what ``trainer.predict`` (``rl-lightning predict``) ran, written to a CSV or JSON file."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from tensordict import TensorDict
from typing_extensions import override

from rl_lightning import keys
from rl_lightning._checks import check_positive
from rl_lightning.data import RLDataModule
from rl_lightning.recording import require_video_extra, write_video

EPISODE_FORMATS = (".csv", ".json")
"""The suffixes :class:`EpisodeWriter` writes."""


def check_episodes_path(output: str | os.PathLike[str]) -> Path:
    """The path, if it ends in ``.csv`` or ``.json``.

    Raises:
        ValueError: for another suffix, naming the formats.
    """
    path = Path(output)
    if path.suffix not in EPISODE_FORMATS:
        raise ValueError(
            f"output={str(path)!r} has the suffix {path.suffix or '(none)'!r}: expected .csv (a row per episode) or "
            ".json (the episodes and their means), e.g. episodes.csv."
        )
    return path


class EpisodeWriter(BasePredictionWriter):
    """Logs the return and length of each episode ``trainer.predict`` ran with an RL module, and their means, and
    writes them to a CSV (``episode,return,length``) or JSON file; optionally records the episodes to an mp4.

    Args:
        output: a ``.csv`` or ``.json`` file; ``None`` writes ``<checkpoint>-episodes.csv`` beside the checkpoint
            ``trainer.predict`` loaded (``ckpt_path``), or ``episodes.csv`` in ``trainer.default_root_dir``.
        video: render the first evaluation env's episodes and write them to an mp4 beside the output (the ``video``
            extra).
        fps: frames per second of the video.

    Example::

        trainer = Trainer(callbacks=[EpisodeWriter("episodes.json")], logger=False)
        trainer.predict(PPO.load_from_checkpoint("last.ckpt"), datamodule=RLDataModule("CartPole-v1"))
    """

    def __init__(self, output: str | Path | None = None, video: bool = False, fps: int = 30) -> None:
        super().__init__(write_interval="epoch")
        self.output = None if output is None else check_episodes_path(output)
        check_positive("fps", fps)
        if video:
            require_video_extra("EpisodeWriter(video=True)")
        self.video = video
        self.fps = fps
        self.written: Path | None = None
        """The file the last ``trainer.predict`` wrote."""

    def output_path(self, trainer: pl.Trainer) -> Path:
        """Where the episodes go: :attr:`output`, else beside the checkpoint, else in the default root dir."""
        if self.output is not None:
            return self.output
        ckpt_path = trainer.ckpt_path
        if ckpt_path:
            ckpt = Path(ckpt_path)
            return ckpt.with_name(f"{ckpt.stem}-episodes.csv")
        return Path(trainer.default_root_dir) / "episodes.csv"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if stage == "predict" and self.video and isinstance(datamodule, RLDataModule):
            datamodule.predict_frames = []

    @override
    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if not trainer.is_global_zero:
            return
        batches = [p for p in _flatten(predictions) if isinstance(p, TensorDict)]
        if not batches:
            return
        returns = torch.cat([b[keys.EPISODE_RETURN].reshape(-1) for b in batches]).tolist()
        lengths = torch.cat([b[keys.EPISODE_LENGTH].reshape(-1) for b in batches]).tolist()
        for i, (ret, length) in enumerate(zip(returns, lengths, strict=True), 1):
            rank_zero_info(f"episode {i}: return {ret:.6g}, length {int(length)}")
        mean_return, mean_length = float(np.mean(returns)), float(np.mean(lengths))
        rank_zero_info(f"mean over {len(returns)} episodes: return {mean_return:.6g}, length {mean_length:.6g}")
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            record = {
                "checkpoint": trainer.ckpt_path,
                "env_id": getattr(trainer.datamodule, "env_id", None),  # type: ignore[attr-defined]
                "episodes": [{"return": r, "length": int(n)} for r, n in zip(returns, lengths, strict=True)],
                "mean_return": mean_return,
                "mean_length": mean_length,
            }
            path.write_text(json.dumps(record, indent=2) + "\n")
        else:
            with path.open("w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["episode", "return", "length"])
                for i, (ret, length) in enumerate(zip(returns, lengths, strict=True), 1):
                    writer.writerow([i, ret, int(length)])
        rank_zero_info(f"Wrote the episodes to {path}.")
        self.written = path
        datamodule = getattr(trainer, "datamodule", None)
        frames = datamodule.predict_frames if isinstance(datamodule, RLDataModule) else None
        if self.video and frames:
            video = write_video(path.with_suffix(".mp4"), np.stack(frames), self.fps)
            rank_zero_info(f"Wrote the video of the first env's episodes to {video}.")
        if isinstance(datamodule, RLDataModule):
            datamodule.predict_frames = None


def _flatten(predictions: Any) -> list[Any]:
    """Lightning's predictions: a list per dataloader, or one list of batch outputs for a single dataloader."""
    if isinstance(predictions, list):
        return [item for p in predictions for item in _flatten(p)]
    return [predictions]

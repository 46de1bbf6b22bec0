"""Videos: mp4 files, and videos sent to the loggers (whether an env renders ``rgb_array`` frames is
:func:`rl_lightning.envs.check_rgb_array`).

The ``video`` extra (``pip install 'rl-lightning[video]'``) provides imageio and imageio-ffmpeg, which write the
mp4 files. TensorBoard gets an animated GIF of the same frames (what ``SummaryWriter.add_video`` writes; that
method needs ``moviepy<2``, so with moviepy 2 the GIF is encoded here with imageio); W&B gets the mp4 through
``WandbLogger.log_video``; MLflow gets it as an artifact under ``videos/``; other loggers (CSV) only get the file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from rl_lightning._checks import require_packages

VIDEO_EXTRA = "pip install 'rl-lightning[video]'"
"""How to install what writing videos needs."""


def require_video_extra(who: str) -> None:
    """Raises when imageio or imageio-ffmpeg (the ``video`` extra) cannot be imported.

    Args:
        who: what needs the videos, named in the message (e.g. ``"LogValidationReward(record_video=True)"``).

    Raises:
        ModuleNotFoundError: naming the missing package and the extra to install.
    """
    require_packages(
        ("imageio", "imageio_ffmpeg"), f"{who} writes mp4 videos: it", VIDEO_EXTRA, "turn video recording off"
    )


def write_video(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """Writes ``[T, H, W, 3]`` uint8 frames to an H.264 mp4 file; odd heights or widths are padded by one row or
    column of black (yuv420p needs even sizes). Returns the path."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    imageio.mimwrite(path, list(frames), fps=fps, codec="libx264", macro_block_size=1)
    return path


def log_video(loggers: Sequence[Logger], tag: str, path: Path, frames: np.ndarray, step: int, fps: int) -> None:
    """Sends a written video to every logger that takes videos: TensorBoard (an animated GIF image), W&B
    (``wandb.Video`` of the mp4) and MLflow (the mp4 as an artifact under ``videos/``). Call on rank zero."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            _tensorboard_video(logger.experiment, tag, frames, step, fps)
        elif isinstance(logger, WandbLogger):
            logger.log_video(tag, [str(path)], step=step, fps=[fps], format=["mp4"])
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="videos")


def _tensorboard_video(writer: Any, tag: str, frames: np.ndarray, step: int, fps: int) -> None:
    """``writer.add_video`` where torch's implementation works (moviepy < 2); otherwise the same summary, an
    animated GIF in an image value, encoded with imageio."""
    try:
        from moviepy import editor  # noqa: F401  # what torch's add_video imports; gone in moviepy 2
    except ImportError:
        import imageio.v2 as imageio
        from tensorboard.compat.proto.summary_pb2 import Summary

        buffer = io.BytesIO()
        imageio.mimwrite(buffer, list(frames), format="GIF", duration=1000 / fps, loop=0)
        _, height, width, channels = frames.shape
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue())
        writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        return
    import torch

    writer.add_video(tag, torch.from_numpy(frames).permute(0, 3, 1, 2).unsqueeze(0), global_step=step, fps=fps)

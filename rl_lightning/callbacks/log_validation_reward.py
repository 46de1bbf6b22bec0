"""``LogValidationReward``: evaluation episodes every ``interval_frames`` env frames, optionally recorded as videos."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from rl_lightning._checks import check_int, check_positive
from rl_lightning.callbacks.rl_callback import RLCallback
from rl_lightning.collector import evaluate
from rl_lightning.data import CALLBACK_SEEDS, RLDataModule, evaluation_seed
from rl_lightning.envs import Vectorization, check_rgb_array
from rl_lightning.recording import log_video, require_video_extra, write_video

if TYPE_CHECKING:
    import gymnasium as gym

    from rl_lightning.module import RLModule


class LogValidationReward(RLCallback):
    """Runs ``num_episodes`` evaluation episodes every ``interval_frames`` env frames and logs their mean return
    and length as ``<prefix>/episode_return`` and ``<prefix>/episode_length`` against env frames (the ``step``
    of every curve); with ``record_video=True`` it also renders them, as torchrl's ``LogValidationReward`` with a
    ``VideoRecorder`` does.

    Evaluation is :func:`rl_lightning.collector.evaluate` (the validation loop's function) on envs of its own,
    made like the data's (same env id, wrappers and frame skip). It runs after the optimizer steps of the first
    batch at or past each multiple of ``interval_frames``. It runs on rank zero only: evaluating is a forward pass
    of the policy, with no collective operation, and loggers write on rank zero anyway; the other ranks go on to
    the next batch and wait for rank zero at its first all-reduce. The metrics go straight to the loggers (not
    through ``self.log``, which Lightning writes only every ``log_every_n_steps`` batches), so they are not in
    ``trainer.callback_metrics``: to monitor evaluation returns in ``ModelCheckpoint`` or ``EarlyStopping``, use
    the validation loop's ``val/episode_return``.

    Videos record env 0's episodes of an evaluation (at most ``max_video_frames`` frames; with same-step
    autoreset the terminal frame of an episode is never shown), written as
    ``<log dir>/videos/<prefix>_frames<frames>.mp4`` (``trainer.log_dir``, or ``default_root_dir`` without a
    logger) and sent to TensorBoard (animated image), W&B (``wandb.Video``) and MLflow (artifact); the CSV logger
    gets only the files. They need the ``video`` extra and an env that renders ``rgb_array`` frames; both are
    checked when fit starts.

    Args:
        interval_frames: env frames (all ranks together) between evaluations.
        num_episodes: episodes per evaluation.
        num_envs: envs stepped together during an evaluation.
        deterministic: evaluate the deterministic policy (the distribution's mode) instead of sampling.
        prefix: namespace of the logged metrics and of the video files.
        record_video: render the episodes and write them as videos.
        fps: frames per second of the videos.
        max_video_frames: the most frames a video holds.
        seed: evaluation ``k`` seeds its envs with :func:`~rl_lightning.data.evaluation_seed` of ``seed`` and ``k``
            (a stream of its own, apart from the training envs and the validation loop's); ``None`` uses the data's
            seed (and leaves the envs unseeded when that is ``None`` too).

    Example::

        trainer = make_trainer(callbacks=[LogValidationReward(interval_frames=5_000, record_video=True)])
    """

    def __init__(
        self,
        interval_frames: int = 10_000,
        num_episodes: int = 10,
        num_envs: int = 1,
        deterministic: bool = True,
        prefix: str = "eval",
        record_video: bool = False,
        fps: int = 30,
        max_video_frames: int = 1_000,
        seed: int | None = None,
    ) -> None:
        check_int("interval_frames", interval_frames, hint="Give the env frames between two evaluations.")
        check_int("num_episodes", num_episodes, hint="It is the episodes per evaluation, e.g. 10.")
        check_int("num_envs", num_envs, hint="It is the envs stepped together during an evaluation.")
        check_positive("fps", fps, "It is the frames per second of the videos, e.g. 30.")
        check_int("max_video_frames", max_video_frames, hint="It is the most frames a video holds, e.g. 1000.")
        if seed is not None:
            check_int("seed", seed, minimum=0, hint="Gymnasium takes non-negative seeds; use null for the data's seed.")
        if not prefix:
            raise ValueError("prefix='' is invalid: give the metrics' namespace, e.g. 'eval'.")
        self.interval_frames = interval_frames
        self.num_episodes = num_episodes
        self.num_envs = min(num_envs, num_episodes)
        self.deterministic = deterministic
        self.prefix = prefix
        self.record_video = record_video
        self.fps = fps
        self.max_video_frames = max_video_frames
        self.seed = seed
        self.evaluations = 0
        """Evaluations run so far."""
        self.next_frames = interval_frames
        """The frame count at which the next evaluation runs."""
        self.last_metrics: dict[str, float] = {}
        """The metrics of the last evaluation (on rank zero)."""
        self.last_video: Path | None = None
        """The file of the last video (on rank zero)."""
        self.video_dir: Path | None = None
        self._envs: gym.vector.VectorEnv | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        data = getattr(trainer, "datamodule", None)
        if not isinstance(data, RLDataModule):
            raise ValueError(
                f"LogValidationReward evaluates on the env of an RLDataModule, but the trainer has {data!r}. "
                "Call trainer.fit(model, datamodule=RLDataModule(...))."
            )
        if self.record_video:
            who = "LogValidationReward(record_video=True)"
            require_video_extra(who)
            check_rgb_array(data.env_id, data.wrappers, data.frame_skip, who, env_kwargs=data.env_kwargs)
            # trainer.log_dir broadcasts from rank zero, so every rank asks for it here.
            self.video_dir = Path(trainer.log_dir or trainer.default_root_dir) / "videos"

    @override
    def on_post_steps(self, trainer: pl.Trainer, module: RLModule) -> None:
        if module.frames < self.next_frames:
            return
        self.next_frames = (module.frames // self.interval_frames + 1) * self.interval_frames
        self.evaluations += 1
        if trainer.is_global_zero:
            self.run_evaluation(trainer, module)

    def run_evaluation(self, trainer: pl.Trainer, module: RLModule) -> dict[str, float]:
        """Runs one evaluation now, logs it at ``module.frames`` and returns its metrics."""
        data: RLDataModule = module.data
        if self._envs is None:
            render_mode = "rgb_array" if self.record_video else None
            # The data's evaluation envs (no train_wrappers), in this process; EnvPool ids only EnvPool makes.
            vectorization: Vectorization = "envpool" if data.vectorization == "envpool" else "sync"
            self._envs = data.make_eval_envs(self.num_envs, render_mode=render_mode, vectorization=vectorization)
        base = self.seed if self.seed is not None else data.seed
        frames: list[np.ndarray] | None = [] if self.record_video else None

        def policy(obs: torch.Tensor) -> dict[str, torch.Tensor]:
            return module.act(obs, deterministic=self.deterministic)

        training = module.training
        module.eval()
        try:
            result = evaluate(
                self._envs,
                policy,
                self.num_episodes,
                # rank zero only (see the class docstring)
                seed=None if base is None else evaluation_seed(base, 0, self.evaluations, CALLBACK_SEEDS),
                frames=frames,
                max_frames=self.max_video_frames,
                env_id=data.env_id,
            )
        finally:
            module.train(training)
        step = int(module.frames)
        metrics = {
            f"{self.prefix}/episode_return": float(result["episode_return"].mean()),
            f"{self.prefix}/episode_length": float(result["episode_length"].to(torch.float32).mean()),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.last_metrics = metrics
        if frames:
            assert self.video_dir is not None, "setup() sets video_dir when record_video is on"
            video = np.stack(frames)
            self.last_video = write_video(self.video_dir / f"{self.prefix}_frames{step:09d}.mp4", video, self.fps)
            log_video(trainer.loggers, f"{self.prefix}/video", self.last_video, video, step, self.fps)
        return metrics

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._envs is not None:
            self._envs.close()
            self._envs = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations, "next_frames": self.next_frames}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.evaluations = int(state_dict["evaluations"])
        self.next_frames = int(state_dict["next_frames"])

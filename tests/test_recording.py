"""Recording: evaluation every N frames with videos (LogValidationReward), rollout dumps (RolloutRecorder) and
rendered frames in the training batch (RLDataModule(pixels=True))."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image, ImageSequence
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensordict import TensorDict

from rl_lightning import LogValidationReward, RLCallback, RLDataModule, RolloutRecorder, keys
from rl_lightning.cli import cli
from rl_lightning.collector import Collector, evaluate
from rl_lightning.envs import make_env, make_vec_env
from tests.conftest import tiny_ppo_run

CARTPOLE_FRAME = (400, 600, 3)
NO_RENDER_ID = "RLLightningTest/NoRender-v0"


class NoRenderEnv(gym.Env):
    """A one-step env that renders nothing (no ``rgb_array`` in its render modes)."""

    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: Any) -> Any:
        return np.zeros(2, dtype=np.float32), 1.0, True, False, {}


if NO_RENDER_ID not in gym.registry:
    gym.register(NO_RENDER_ID, entry_point=f"{__name__}:NoRenderEnv")


def _random(obs: torch.Tensor) -> dict[str, torch.Tensor]:
    return {keys.ACTION: torch.randint(0, 2, (len(obs),))}


# -- frames of evaluation episodes --------------------------------------------------------------------------


@pytest.mark.parametrize("max_frames", [None, 15])
def test_evaluate_records_one_frame_per_step_of_env_zero(max_frames: int | None) -> None:
    torch.manual_seed(0)
    envs = make_vec_env("CartPole-v1", num_envs=1, render_mode="rgb_array")
    frames: list[np.ndarray] = []
    result = evaluate(envs, _random, num_episodes=2, seed=3, frames=frames, max_frames=max_frames)
    envs.close()
    total = int(result[keys.EPISODE_LENGTH].sum())
    assert len(frames) == (total if max_frames is None else min(max_frames, total))
    assert all(f.shape == CARTPOLE_FRAME and f.dtype == np.uint8 for f in frames)
    first = make_env("CartPole-v1", render_mode="rgb_array")
    first.reset(seed=3)
    np.testing.assert_array_equal(frames[0], first.render())  # the state the first action was chosen in
    first.close()


def test_recording_leaves_the_evaluation_unchanged() -> None:
    greedy = lambda obs: {keys.ACTION: (obs[:, 2] > 0).long()}  # noqa: E731
    plain = evaluate(make_vec_env("CartPole-v1", 2), greedy, num_episodes=3, seed=5)
    rendering = make_vec_env("CartPole-v1", 2, render_mode="rgb_array")
    frames: list[np.ndarray] = []
    recorded = evaluate(rendering, greedy, num_episodes=3, seed=5, frames=frames)
    rendering.close()
    assert (plain == recorded).all()
    env0 = evaluate(make_vec_env("CartPole-v1", 1), greedy, num_episodes=2, seed=5)  # env 0's quota: 2 episodes
    assert len(frames) == int(env0[keys.EPISODE_LENGTH].sum())


# -- LogValidationReward --------------------------------------------------------------------------------------


def _decode(path: Path) -> tuple[list[np.ndarray], float]:
    """The frames and fps of a video file, decoded by imageio-ffmpeg."""
    reader: Any
    with imageio.get_reader(path) as reader:
        # iterate: list(reader) asks for its length, which ffmpeg reports as infinite
        return [frame for frame in reader], reader.get_meta_data()["fps"]


def _csv_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_log_validation_reward_logs_against_frames_and_writes_videos_to_tensorboard(tmp_path: Path) -> None:
    fps, max_frames = 10, 1_000
    recorder = LogValidationReward(interval_frames=128, num_episodes=2, record_video=True, fps=fps)
    tensorboard, csv_logger = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[recorder], logger=[tensorboard, csv_logger])
    trainer.fit(model, datamodule=data)

    assert recorder.evaluations == 2 and recorder.state_dict() == {"evaluations": 2, "next_frames": 384}
    rows = [r for r in _csv_rows(csv_logger) if r["eval/episode_return"]]
    assert [int(r["step"]) for r in rows] == [128, 256]  # env frames as the x-axis
    lengths = {int(r["step"]): float(r["eval/episode_length"]) for r in rows}

    events = EventAccumulator(tensorboard.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("eval/episode_return")] == [128, 256]
    assert [float(r["eval/episode_return"]) for r in rows] == [e.value for e in events.Scalars("eval/episode_return")]
    images = events.Images("eval/video")
    assert [e.step for e in images] == [128, 256]

    video_dir = Path(trainer.log_dir or "") / "videos"
    assert video_dir == Path(tensorboard.log_dir) / "videos"
    for image in images:
        expected = min(max_frames, round(lengths[image.step] * 2))  # one env: both episodes are env 0's
        decoded, decoded_fps = _decode(video_dir / f"eval_frames{image.step:09d}.mp4")
        assert decoded_fps == fps
        assert len(decoded) == expected and decoded[0].shape == CARTPOLE_FRAME
        gif = Image.open(io.BytesIO(image.encoded_image_string))
        assert gif.format == "GIF" and gif.size == (600, 400) and (image.width, image.height) == (600, 400)
        # the GIF merges repeated frames into longer ones; its duration is that of every frame
        assert sum(frame.info["duration"] for frame in ImageSequence.Iterator(gif)) == expected * 1000 // fps
    assert recorder.last_video == video_dir / "eval_frames000000256.mp4"


def test_log_validation_reward_without_video_evaluates_after_each_interval(tmp_path: Path) -> None:
    recorder = LogValidationReward(interval_frames=100, num_episodes=3, num_envs=2, prefix="greedy")
    csv_logger = CSVLogger(tmp_path)
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[recorder], logger=csv_logger)
    trainer.fit(model, datamodule=data)
    rows = [r for r in _csv_rows(csv_logger) if r.get("greedy/episode_return")]
    assert [int(r["step"]) for r in rows] == [128, 256]  # the first batches at or past 100 and 200 frames
    assert float(rows[-1]["greedy/episode_return"]) == recorder.last_metrics["greedy/episode_return"]
    assert not list(tmp_path.rglob("*.mp4"))

    resumed = LogValidationReward(interval_frames=100, prefix="greedy")
    resumed.load_state_dict(recorder.state_dict())
    assert (resumed.evaluations, resumed.next_frames) == (2, 300)


def test_log_validation_reward_on_an_env_without_rgb_array_stops_at_fit_start(tmp_path: Path) -> None:
    recorder = LogValidationReward(interval_frames=2, num_episodes=1, record_video=True)
    trainer, model, data = tiny_ppo_run(
        tmp_path, data={"env_id": NO_RENDER_ID, "num_envs": 2, "frames_per_batch": 2, "total_frames": 4},
        model={"batch_size": 2}, callbacks=[recorder],
    )  # fmt: skip
    with pytest.raises(ValueError, match=f"env '{NO_RENDER_ID}'.*rgb_array"):
        trainer.fit(model, datamodule=data)
    assert model.frames == 0 and model.updates == 0


def test_log_validation_reward_without_the_video_extra_names_it(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # what a missing package looks like to `import`
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[LogValidationReward(record_video=True)])
    with pytest.raises(ModuleNotFoundError, match=r"imageio_ffmpeg.*pip install 'rl-lightning\[video\]'"):
        trainer.fit(model, datamodule=data)
    assert model.frames == 0


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="interval_frames=0"):
        LogValidationReward(interval_frames=0)
    with pytest.raises(ValueError, match="interval=-1"):
        RolloutRecorder(interval=-1)
    with pytest.raises(ValueError, match="stage='raw'"):
        RolloutRecorder(stage="raw")  # type: ignore[arg-type]


# -- RolloutRecorder -----------------------------------------------------------------------------------------


class SeenBatches(RLCallback):
    """Keeps a copy of the collected batch and of the prepared batch of every iteration."""

    def __init__(self) -> None:
        self.collected: list[TensorDict] = []
        self.prepared: list[TensorDict] = []

    def on_batch_process(self, trainer: Any, module: Any, batch: TensorDict) -> None:
        self.collected.append(batch.clone())

    def on_pre_optim_steps(self, trainer: Any, module: Any) -> None:
        self.prepared.append(module.loop.batch.clone())


@pytest.mark.parametrize("stage", ["collected", "prepared"])
def test_rollout_recorder_round_trip(tmp_path: Path, stage: Any) -> None:
    seen = SeenBatches()
    recorder = RolloutRecorder(interval=2, dirpath=str(tmp_path / "rollouts"), stage=stage)
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[recorder, seen])
    trainer.fit(model, datamodule=data)
    written = sorted(p.name for p in (tmp_path / "rollouts").iterdir())
    assert written == ["batch_000002", "batch_000004"]
    batches = seen.collected if stage == "collected" else seen.prepared
    for name, batch in zip(written, (batches[1], batches[3]), strict=True):
        loaded = TensorDict.load_memmap(tmp_path / "rollouts" / name)
        assert loaded.batch_size == batch.batch_size == torch.Size([4, 16])
        assert set(loaded.keys(include_nested=True, leaves_only=True)) == set(
            batch.keys(include_nested=True, leaves_only=True)
        )
        assert (loaded == batch).all()
    assert (keys.ADVANTAGE in loaded.keys()) == (stage == "prepared")
    assert recorder.state_dict() == {"batches": 4}


def test_rollout_recorder_defaults_to_the_log_dir(tmp_path: Path) -> None:
    recorder = RolloutRecorder(interval=4)
    logger = CSVLogger(tmp_path)
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[recorder], logger=logger)
    trainer.fit(model, datamodule=data)
    assert recorder.last_path == Path(logger.log_dir) / "rollouts" / "batch_000004"
    assert TensorDict.load_memmap(recorder.last_path).batch_size == torch.Size([4, 16])


# -- pixels in the batch ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_collector_stores_each_envs_rendered_frame(vectorization: Any) -> None:
    # gymnasium 1.4: envs.render() of a sync or an async vector env is a tuple of one [H, W, 3] frame per env
    envs = make_vec_env("CartPole-v1", 2, vectorization=vectorization, render_mode="rgb_array")
    torch.manual_seed(0)
    collector = Collector(envs, _random, steps_per_batch=6, pixels=True)
    collector.reset(seed=7)
    rendered: Any = envs.render()
    assert isinstance(rendered, tuple) and [f.shape for f in rendered] == [CARTPOLE_FRAME] * 2
    batch = collector.collect()
    envs.close()
    pixels = batch[keys.PIXELS]
    assert pixels.shape == (2, 6, *CARTPOLE_FRAME) and pixels.dtype == torch.uint8
    assert batch[keys.OBSERVATION].shape == (2, 6, 4)
    for i in range(2):  # env i's frame of its first observation, in env order
        env = make_env("CartPole-v1", render_mode="rgb_array")
        env.reset(seed=7 + i)
        np.testing.assert_array_equal(pixels[i, 0].numpy(), env.render())
        env.close()
    assert (pixels[:, 0] != pixels[:, -1]).any()


def test_collector_without_rendering_envs_refuses_pixels() -> None:
    envs = make_vec_env("CartPole-v1", 2)
    with pytest.raises(ValueError, match="render_mode=None"):
        Collector(envs, _random, steps_per_batch=4, pixels=True)
    envs.close()


def test_pixels_reach_the_training_batch(tmp_path: Path) -> None:
    seen = SeenBatches()
    trainer, model, data = tiny_ppo_run(tmp_path, data={"pixels": True, "total_frames": 128}, callbacks=[seen])
    assert data.pixels_shape == CARTPOLE_FRAME
    trainer.fit(model, datamodule=data)
    assert len(seen.collected) == 2
    for batch in seen.collected:
        pixels = batch[keys.PIXELS]
        assert pixels.shape == (4, 16, *CARTPOLE_FRAME) and pixels.dtype == torch.uint8
        assert batch[keys.OBSERVATION].shape == (4, 16, 4)
        changed = (pixels[:, 1:] != pixels[:, :-1]).flatten(2).any(-1)
        assert changed.any(dim=1).all()  # every env's frames change over the batch
    assert model.frames == 128


def test_pixels_on_an_env_without_rgb_array_fail_at_construction() -> None:
    with pytest.raises(ValueError, match=f"RLDataModule\\(pixels=True\\).*'{NO_RENDER_ID}'.*rgb_array"):
        RLDataModule(NO_RENDER_ID, num_envs=1, frames_per_batch=4, total_frames=4, pixels=True)


# -- from YAML ----------------------------------------------------------------------------------------------


def test_recording_from_yaml(tmp_path: Path) -> None:
    config = {
        "model": {
            "class_path": "rl_lightning.PPO",
            "init_args": {"n_epochs": 1, "batch_size": 32, "hidden_sizes": [16]},
        },
        "data": {"num_envs": 2, "frames_per_batch": 32, "total_frames": 64, "eval_episodes": 1, "pixels": True},
        "trainer": {
            "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "callbacks": [
                {
                    "class_path": "rl_lightning.callbacks.LogValidationReward",
                    "init_args": {
                        "interval_frames": 64, "num_episodes": 1, "record_video": True, "max_video_frames": 5
                    },
                },
                {"class_path": "rl_lightning.callbacks.RolloutRecorder", "init_args": {"interval": 2}},
            ],
        },
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = cli(["fit", f"--config={path}"])
    callbacks = run.trainer.callbacks  # type: ignore[attr-defined]  # set dynamically by Lightning
    recorder = next(cb for cb in callbacks if isinstance(cb, LogValidationReward))
    assert (recorder.interval_frames, recorder.record_video, recorder.evaluations) == (64, True, 1)
    assert recorder.last_video is not None
    assert len(_decode(recorder.last_video)[0]) == 5
    dumped = TensorDict.load_memmap(Path(run.trainer.log_dir or "") / "rollouts" / "batch_000002")
    assert dumped[keys.PIXELS].shape == (2, 16, *CARTPOLE_FRAME)


def _logger(kind: str, tmp_path: Path) -> Any:
    if kind == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(
            experiment_name="recording",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            artifact_location=str(tmp_path / "mlruns"),
        )
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project="recording", save_dir=str(tmp_path), offline=True)


@pytest.mark.parametrize("kind", ["mlflow", "wandb"])
def test_videos_reach_mlflow_and_wandb(tmp_path: Path, kind: str) -> None:
    logger = _logger(kind, tmp_path)
    recorder = LogValidationReward(interval_frames=256, num_episodes=1, record_video=True, max_video_frames=6)
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[recorder], logger=logger)
    trainer.fit(model, datamodule=data)
    if kind == "wandb":
        logger.experiment.finish()
    assert recorder.last_video is not None and recorder.last_video.name == "eval_frames000000256.mp4"
    if kind == "mlflow":
        logged = list((tmp_path / "mlruns").rglob("artifacts/videos/eval_frames000000256.mp4"))
    else:  # wandb.Video re-encodes nothing for a file: it copies the mp4 into the run's media
        logged = list(tmp_path.rglob("files/media/videos/eval/video_*.mp4"))
    assert len(logged) == 1
    assert len(_decode(logged[0])[0]) == 6

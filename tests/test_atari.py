"""The Atari configs run a real ALE game through ``rl-lightning fit``, with a checkpoint and a resume: Pong frames
preprocessed to ``[4, 84, 84]`` uint8 stacks, the Nature CNN reading them channels first, the training-only
wrappers on the training envs only. Shrunk by overrides (envs, batch, episode length) to run in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rl_lightning import PPO, RLCallback, RLDataModule, RLModule, keys
from rl_lightning.cli import cli
from rl_lightning.encoders import ImageEncoder
from tests.conftest import ROOT, quiet_trainer

pytest.importorskip("ale_py", reason="the atari extra (ale-py) is not installed")

# Games cut at 400 emulator frames (100 agent steps), so that evaluation episodes end quickly.
SHORT_GAMES = {"frameskip": 1, "repeat_action_probability": 0.0, "max_num_frames_per_episode": 400}


def _small(config: str, tmp_path: Path, total_frames: int) -> list[str]:
    model = (
        ["--model.init_args.n_epochs=1", "--model.init_args.batch_size=32"]
        if config == "ppo_atari.yaml"
        else [
            "--model.init_args.init_random_frames=32",
            "--model.init_args.buffer_size=1000",
            "--model.init_args.exploration_frames=256",
        ]
    )
    return [
        f"--config={ROOT / 'configs' / config}",
        *model,
        "--data.num_envs=2",
        "--data.frames_per_batch=64",
        f"--data.total_frames={total_frames}",
        f"--data.env_kwargs={json.dumps(SHORT_GAMES)}",
        "--data.eval_episodes=1",
        "--data.eval_envs=1",
        "--trainer.val_check_interval=2",  # an evaluation at each checkpoint
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ppo_atari.yaml", "dqn_atari.yaml"])
def test_an_atari_config_trains_on_pong_checkpoints_and_resumes(config: str, tmp_path: Path) -> None:
    run = cli(["fit", *_small(config, tmp_path, total_frames=128)])
    model, data = run.model, run.datamodule
    assert model.frames == 128 and model.updates > 0
    assert data.observation_space.shape == (4, 84, 84) and data.observation_space.dtype == np.uint8
    assert isinstance(model.encoder, ImageEncoder) and not model.encoder.channels_last  # stacked frames first
    assert "val/episode_return" in run.trainer.callback_metrics
    train_wrappers = [w if isinstance(w, str) else w["class_path"] for w in data.train_wrappers]
    assert train_wrappers == ["rl_lightning.envs.EpisodicLife", "gymnasium.wrappers.ClipReward"]
    last = next(tmp_path.rglob("last.ckpt"))
    saved = torch.load(last, map_location="cpu", weights_only=False)["rl_lightning"]
    resumed = cli(["fit", *_small(config, tmp_path, total_frames=256), f"--ckpt_path={last}"])
    assert resumed.model.frames == 256 and saved["frames"] == 128
    assert resumed.model.updates > saved["updates"]


class GameEnds(RLCallback):
    """Counts, over the collected batches, the transitions that ended a training episode and those that ended a game."""

    def __init__(self) -> None:
        self.dones = self.games = 0

    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        self.dones += int(batch[keys.NEXT_DONE].sum())
        self.games += int((batch[keys.NEXT_EPISODE_LENGTH] > 0).sum())


@pytest.mark.slow
def test_lost_lives_end_training_episodes_but_the_curves_count_whole_games(tmp_path: Path) -> None:
    """Breakout under EpisodicLife: each lost life ends a training episode (values do not bootstrap over it), but
    rollout/episodes and rollout/episode_return count whole games of five lives, as stable-baselines3's Monitor."""
    pl.seed_everything(0)
    data = RLDataModule(
        "ALE/Breakout-v5",
        env_kwargs={"frameskip": 1, "repeat_action_probability": 0.0},
        wrappers=[{"class_path": "gymnasium.wrappers.AtariPreprocessing", "init_args": {"screen_size": 36}}],
        train_wrappers=["rl_lightning.envs.EpisodicLife"],
        num_envs=4,
        frames_per_batch=512,
        total_frames=2048,
        eval_episodes=1,
    )
    model = PPO(data.observation_space, data.action_space, n_epochs=1, batch_size=256, hidden_sizes=[])
    ends = GameEnds()
    trainer = quiet_trainer(tmp_path, callbacks=[ends], limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert ends.games >= 2 and ends.dones >= 4 * ends.games  # five lives a game (a game may end before its last)
    assert model.episodes == ends.games
    assert model.episode_stats.compute()[1] > 100  # mean length of whole games, in agent steps

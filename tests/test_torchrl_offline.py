"""Offline RL with torchrl's IQLLoss: a dataset recorded locally by a noisy rl_lightning TD3, then IQL trained on it
through OfflineDataModule (no env stepped for training; evaluation episodes in the env). Runs in the torchrl
environment (``bash scripts/setup_torchrl.sh``), skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

pytest.importorskip(
    "torchrl", reason="torchrl is not importable here: run these tests in .venv-torchrl (scripts/setup_torchrl.sh)"
)

from torchrl.objectives import IQLLoss

from examples.torchrl_offline_iql import TorchRLIQL, main, make_iql, record_behaviour
from rl_lightning import TD3
from rl_lightning.cli import cli
from rl_lightning.interop.torchrl_module import TorchRLModule
from rl_lightning.offline import OfflineDataModule, generate_dataset
from tests.conftest import ROOT, quiet_trainer

PENDULUM = gym.make("Pendulum-v1")


def fit_iql(
    dataset: Path, run: Path, total_frames: int, ckpt_path: str | None = None, checkpoint: ModelCheckpoint | None = None
) -> tuple[pl.Trainer, TorchRLModule, IQLLoss]:
    """IQL on ``dataset``, batches of 128 transitions, 2 updates each."""
    pl.seed_everything(0)
    data = OfflineDataModule(str(dataset), frames_per_batch=128, total_frames=total_frames,
                             eval_episodes=1, eval_envs=1)  # fmt: skip
    loss, updater = make_iql()
    model = TorchRLModule(data.observation_space, data.action_space, loss, batch_size=64, target_updater=updater)
    callbacks = [] if checkpoint is None else [checkpoint]
    trainer = quiet_trainer(run, log_every_n_steps=1, callbacks=callbacks, enable_checkpointing=bool(callbacks))
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model, loss


def test_iql_trains_on_stored_batches_with_its_target_updates_and_resumes_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    behaviour = TD3(PENDULUM.observation_space, PENDULUM.action_space, hidden_sizes=[8])
    generate_dataset(behaviour, tmp_path / "data", "Pendulum-v1", transitions=400, noise_std=0.5, num_envs=2)
    before = make_iql()[0].target_qvalue_network_params.clone()  # what fit_iql builds, after the same seed

    trainer, whole, loss = fit_iql(
        tmp_path / "data", tmp_path / "whole", total_frames=640
    )  # 5 batches: into a second epoch
    assert whole.frames == 640 and whole.updates == 10 and whole.episodes == 0
    assert {"train/loss_actor", "train/loss_qvalue", "train/loss_value", "val/episode_return"} <= set(
        trainer.callback_metrics
    )
    assert not any(name.startswith("rollout/") for name in trainer.callback_metrics)  # no episodes in stored data
    targets, online = loss.target_qvalue_network_params, loss.qvalue_network_params
    assert not (targets == before).all() and not (targets == online.data).all()  # SoftUpdate moved them part-way

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit_iql(tmp_path / "data", tmp_path / "first", total_frames=256, checkpoint=checkpoint)  # stops mid-epoch
    _, resumed, _ = fit_iql(
        tmp_path / "data", tmp_path / "rest", total_frames=640, ckpt_path=checkpoint.last_model_path
    )
    assert resumed.updates == whole.updates
    for key, value in whole.state_dict().items():  # networks and target parameters: the same run
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.learning
def test_iql_trained_offline_beats_the_noisy_behaviour_policy_on_pendulum(tmp_path: Path) -> None:
    """examples/torchrl_offline_iql.py's parts: IQL on the transitions of a TD3 (trained 8,000 frames; its deterministic
    policy returns about -190) acting with Gaussian noise of twice its half-range (std 4 N m) returns at least 200 more
    than the data's episodes in deterministic evaluation, before the budget of 4,000 updates runs out."""
    pl.seed_everything(0)
    behaviour = record_behaviour(tmp_path / "data", tmp_path, behaviour_frames=8_000, transitions=9_600, noise_std=2.0)
    assert behaviour < -500  # the noise makes the data poor (about -760): there is something to improve on

    pl.seed_everything(0)
    data = OfflineDataModule(
        str(tmp_path / "data"), frames_per_batch=2_560, total_frames=4_000 * 256, eval_episodes=10, eval_envs=10
    )
    loss, updater = make_iql()
    model = TorchRLModule(
        data.observation_space, data.action_space, loss, lr=1e-3, batch_size=256, target_updater=updater
    )
    target = behaviour + 200.0
    stop = EarlyStopping("val/episode_return", mode="max", stopping_threshold=target, patience=10**6,
                         check_on_train_epoch_end=False)  # fmt: skip
    trainer = quiet_trainer(tmp_path / "iql", val_check_interval=25, callbacks=[stop])  # every 250 updates
    trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics["val/episode_return"] >= target
    assert model.frames < data.total_frames and model.episodes == 0  # no env episodes in training


def test_the_example_records_a_dataset_trains_on_it_and_reuses_it(tmp_path: Path) -> None:
    options = ["--dataset", str(tmp_path / "data"), "--root", str(tmp_path), "--behaviour-frames", "512"]
    tiny = ["--transitions", "1600", "--total-frames", "1024", "--frames-per-batch", "512"]
    model, data = main([*options, *tiny])
    assert data.dataset_size == 1_600 and model.frames == 1_024 and model.updates == 4
    assert list(tmp_path.rglob("metrics.csv"))
    written = (tmp_path / "data" / "dataset.json").stat().st_mtime_ns
    main([*options, *tiny])  # the dataset is there: trained on again, not recorded again
    assert (tmp_path / "data" / "dataset.json").stat().st_mtime_ns == written


def test_the_config_trains_iql_from_the_cli_and_predict_rebuilds_the_offline_data_from_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/torchrl_iql.yaml through the CLI (the data's class_path is the OfflineDataModule); then
    ``rl-lightning predict --ckpt_path`` alone builds TorchRLIQL and the OfflineDataModule of the checkpoint."""
    monkeypatch.chdir(ROOT)  # the config names examples.torchrl_offline_iql.TorchRLIQL
    torch.manual_seed(0)
    behaviour = TD3(PENDULUM.observation_space, PENDULUM.action_space, hidden_sizes=[8])
    generate_dataset(behaviour, tmp_path / "data", "Pendulum-v1", transitions=512, noise_std=0.5, num_envs=2)
    run = cli(
        [
            "fit",
            "--config=configs/torchrl_iql.yaml",
            f"--data.init_args.path={tmp_path / 'data'}",
            "--data.init_args.frames_per_batch=256",
            "--data.init_args.total_frames=768",
            "--data.init_args.eval_episodes=1",
            "--trainer.val_check_interval=3",
            "--trainer.log_every_n_steps=1",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert isinstance(run.model, TorchRLIQL) and isinstance(run.datamodule, OfflineDataModule)
    assert run.model.frames == 768 and run.model.updates == 3  # one update of 256 per stored batch of 256
    last = next(tmp_path.rglob("last.ckpt"))
    output = tmp_path / "episodes.csv"
    scored = cli(["predict", f"--ckpt_path={last}", f"--output={output}", "--data.init_args.eval_episodes=2"])
    assert isinstance(scored.model, TorchRLIQL) and isinstance(scored.datamodule, OfflineDataModule)
    assert len(output.read_text().splitlines()) == 1 + 2  # a header and the two episodes

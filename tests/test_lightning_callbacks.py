"""Lightning's own callbacks dropped into a real tiny RL fit: those that work do what they promise, with RL
metrics; those that cannot work stop the fit at start, naming the callback and why."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import (
    BatchSizeFinder,
    DeviceStatsMonitor,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateFinder,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    RichProgressBar,
    StochasticWeightAveraging,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger
from lightning_utilities.core.imports import RequirementCache

from rl_lightning import SAC, RLDataModule, RLModule
from rl_lightning.builders import TRAINER_DEFAULTS
from rl_lightning.cli import cli
from rl_lightning.compat import UNSUPPORTED_CALLBACKS
from tests.conftest import ROOT, quiet_trainer, tiny_ppo_run

BATCH = 64  # frames per collector batch in tiny_ppo_run


class _ValReturns(pl.Callback):
    """Records ``val/episode_return`` after every validation round."""

    def __init__(self) -> None:
        self.returns: list[float] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.returns.append(float(trainer.callback_metrics["val/episode_return"]))


def test_model_checkpoint_keeps_the_best_val_returns(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val/episode_return", mode="max", save_top_k=2, filename="{frames:.0f}"
    )
    returns = _ValReturns()
    trainer, module, data = tiny_ppo_run(
        tmp_path,
        data={"total_frames": 6 * BATCH},
        model={"lr": 3e-3},
        callbacks=[checkpoint, returns],
        enable_checkpointing=True,
        val_check_interval=1,
    )
    trainer.fit(module, datamodule=data)
    assert len(returns.returns) == 6
    assert float(checkpoint.best_model_score) == max(returns.returns)  # type: ignore[arg-type]
    kept = sorted(float(score) for score in checkpoint.best_k_models.values())
    assert kept == sorted(returns.returns)[-2:]
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == sorted(
        Path(p).name for p in checkpoint.best_k_models
    )
    best = torch.load(checkpoint.best_model_path, weights_only=False)
    assert best["rl_lightning"]["frames"] % BATCH == 0 and best["rl_lightning"]["frames"] > 0


def test_early_stopping_at_a_return_threshold_stops_the_run(tmp_path: Path) -> None:
    stopping = EarlyStopping(
        monitor="val/episode_return", mode="max", stopping_threshold=1.0, check_on_train_epoch_end=False
    )
    trainer, module, data = tiny_ppo_run(tmp_path, data={"total_frames": 8 * BATCH}, callbacks=[stopping])
    trainer.fit(module, datamodule=data)
    assert module.frames == 2 * BATCH  # the first evaluation (val_check_interval=2) is above 1.0
    assert "Stopping threshold reached" in (stopping.stopping_reason_message or "")


def test_timer_stops_the_run(tmp_path: Path) -> None:
    timer = Timer(duration={"seconds": 0}, interval="step")
    trainer, module, data = tiny_ppo_run(tmp_path, data={"total_frames": 8 * BATCH}, callbacks=[timer])
    trainer.fit(module, datamodule=data)
    assert module.frames < data.total_frames and trainer.should_stop  # the budget was not spent
    assert timer.time_remaining("train") == 0


def test_learning_rate_monitor_logs_the_annealed_lr(tmp_path: Path) -> None:
    """LearningRateMonitor reads the optimizer's lr at the start of each collector batch: under manual
    optimization, for an optimizer without a scheduler too. PPO anneals the lr in the batch itself, so the
    monitor's value is the previous batch's; PPO's own ``train/lr`` is the lr each batch used."""
    lr, batches = 1e-3, 4
    trainer, module, data = tiny_ppo_run(
        tmp_path,
        model={"lr": lr, "anneal_lr": True},
        callbacks=[LearningRateMonitor(logging_interval="step")],
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    with open(Path(str(trainer.log_dir)) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    monitored = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    used = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    assert used == pytest.approx([lr * (1 - i / batches) for i in range(batches)])
    assert monitored == pytest.approx([lr, *used[:-1]])


def _bar_state(trainer: pl.Trainer) -> tuple[float, float, str]:
    """(position, total, displayed metrics) of the training bar of a TQDM or Rich progress bar."""
    bar = trainer.progress_bar_callback
    if isinstance(bar, TQDMProgressBar):
        tqdm = bar.train_progress_bar
        return tqdm.n, tqdm.total, str(tqdm.postfix)
    assert isinstance(bar, RichProgressBar) and bar.progress is not None and bar.train_progress_bar_id is not None
    task = bar.progress.tasks[bar.train_progress_bar_id]
    metrics = bar._metric_component._metrics if bar._metric_component is not None else {}  # what it renders
    assert task.total is not None
    return task.completed, task.total, str(metrics)


class _BarStates(pl.Callback):
    def __init__(self) -> None:
        self.states: list[tuple[float, float, str]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.states.append(_bar_state(trainer))


BARS = [TQDMProgressBar, RichProgressBar] if RequirementCache("rich") else [TQDMProgressBar]


@pytest.mark.parametrize("bar", BARS, ids=lambda b: b.__name__)
def test_progress_bar_counts_collector_batches_and_shows_return_and_fps(bar: type, tmp_path: Path) -> None:
    states = _BarStates()
    trainer, module, data = tiny_ppo_run(tmp_path, callbacks=[bar(), states], enable_progress_bar=True)
    trainer.fit(module, datamodule=data)
    assert [(n, total) for n, total, _ in states.states] == [(i + 1, 4) for i in range(4)]
    assert all("time/fps" in shown for _, _, shown in states.states)
    assert any("rollout/episode_return" in shown for _, _, shown in states.states)


class _StopAfter(pl.Callback):
    """Stops a fit after ``frames`` env frames, in the middle of the data's epoch."""

    def __init__(self, frames: int) -> None:
        self.frames = frames

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if pl_module.frames >= self.frames:
            trainer.should_stop = True


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")  # the resumed run writes where the first one did
@pytest.mark.parametrize("first_run", ["budget_spent", "stopped_mid_epoch"])
@pytest.mark.parametrize("bar", BARS, ids=lambda b: b.__name__)
def test_progress_bar_total_of_a_resumed_run(bar: type, first_run: str, tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    if first_run == "budget_spent":  # resumed with a larger budget
        first: dict[str, Any] = {"data": {"total_frames": 2 * BATCH}, "callbacks": [checkpoint]}
    else:  # resumed with the same budget
        first = {"data": {"total_frames": 4 * BATCH}, "callbacks": [checkpoint, _StopAfter(2 * BATCH)]}
    trainer, module, data = tiny_ppo_run(tmp_path, enable_checkpointing=True, **first)
    trainer.fit(module, datamodule=data)
    assert module.frames == 2 * BATCH
    states = _BarStates()
    trainer, module, data = tiny_ppo_run(
        tmp_path,
        data={"total_frames": 4 * BATCH},
        callbacks=[bar(), states, checkpoint],
        enable_progress_bar=True,
        enable_checkpointing=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    assert module.frames == 4 * BATCH and len(states.states) == 2
    position, total, _ = states.states[-1]
    assert position == total  # the bar ends full: it counts this run's batches (2 of 2) or the whole run's (4 of 4)


def test_model_summary_lists_the_networks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer, module, data = tiny_ppo_run(tmp_path, callbacks=[ModelSummary(max_depth=2)])
    with caplog.at_level(logging.INFO):
        trainer.fit(module, datamodule=data)
    summary = caplog.text
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert "Trainable params" in summary and f"{params}" in summary.replace(",", "").replace(" ", "")
    top = {name for name, _ in module.named_children() if name not in ("loop",)}
    assert any(name in summary for name in top)


def test_device_stats_monitor(tmp_path: Path) -> None:
    """On CPU DeviceStatsMonitor logs psutil's CPU stats; without psutil it stops at set-up, naming it."""
    trainer, module, data = tiny_ppo_run(
        tmp_path, callbacks=[DeviceStatsMonitor()], logger=CSVLogger(tmp_path), log_every_n_steps=1
    )
    if not RequirementCache("psutil"):
        with pytest.raises(ModuleNotFoundError, match="psutil"):
            trainer.fit(module, datamodule=data)
        assert module.frames == 0
        return
    trainer.fit(module, datamodule=data)
    with open(Path(str(trainer.log_dir)) / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert any("cpu_percent" in column for column in header)


def test_ema_weight_averaging_averages_after_every_collector_batch(tmp_path: Path) -> None:
    """EMAWeightAveraging updates its average once per collector batch (Lightning's on_train_batch_end), evaluates
    the averaged policy, and leaves the averaged weights in the module at the end."""
    averaging = EMAWeightAveraging(decay=0.5)
    seen: list[torch.Tensor] = []

    class Online(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            seen.append(torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()]))

    trainer, module, data = tiny_ppo_run(tmp_path, callbacks=[Online(), averaging])
    trainer.fit(module, datamodule=data)
    assert averaging._average_model is not None
    assert int(averaging._average_model.n_averaged) == len(seen) == 4
    expected = seen[0]
    for online in seen[1:]:
        expected = 0.5 * expected + 0.5 * online
    final = torch.cat([p.detach().flatten() for p in module.parameters()])
    assert torch.allclose(final, expected, atol=1e-6)


def _tiny_sac() -> tuple[SAC, RLDataModule]:
    data = RLDataModule("Pendulum-v1", num_envs=2, frames_per_batch=64, total_frames=128, eval_episodes=1)
    module = SAC(data.observation_space, data.action_space, hidden_sizes=[16], batch_size=32, init_random_frames=0)
    return module, data


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")  # the resumed run writes where the first one did
def test_ema_weight_averaging_resumes_its_average(tmp_path: Path) -> None:
    def run(batches: int, ckpt: Path | None) -> EMAWeightAveraging:
        averaging = EMAWeightAveraging(decay=0.5)
        checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
        trainer, module, data = tiny_ppo_run(
            tmp_path,
            data={"total_frames": batches * BATCH},
            callbacks=[averaging, checkpoint],
            enable_checkpointing=True,
        )
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
        assert module.frames == batches * BATCH
        return averaging

    first = run(2, None)
    assert first._average_model is not None and int(first._average_model.n_averaged) == 2
    resumed = run(4, tmp_path / "last.ckpt")
    assert resumed._average_model is not None and int(resumed._average_model.n_averaged) == 4  # continued


@pytest.mark.parametrize("algorithm", ["PPO", "SAC"])
@pytest.mark.parametrize(
    "callback",
    [LearningRateFinder, StochasticWeightAveraging, BatchSizeFinder],
    ids=lambda c: c.__name__,
)
def test_callbacks_that_cannot_work_stop_the_fit_at_start(callback: type, algorithm: str, tmp_path: Path) -> None:
    """Refused with a plain ``lightning.Trainer`` too, before the callback's own set-up runs (BatchSizeFinder would
    fail on PPO for want of a ``batch_size`` attribute, and go on to scale SAC's)."""
    module: RLModule
    if algorithm == "PPO":
        _, module, data = tiny_ppo_run(tmp_path)
    else:
        module, data = _tiny_sac()
    instance = callback(swa_lrs=1e-3) if callback is StochasticWeightAveraging else callback()
    plain: dict[str, Any] = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = pl.Trainer(
        **{**TRAINER_DEFAULTS, **plain, "accelerator": "cpu", "default_root_dir": tmp_path, "callbacks": [instance]}
    )
    with pytest.raises(ValueError, match=rf"^{callback.__name__} cannot be used in an RL fit: it "):
        trainer.fit(module, datamodule=data)
    assert module.frames == 0 and module.updates == 0
    assert callback in UNSUPPORTED_CALLBACKS


def test_the_cli_refuses_them_before_building_anything(tmp_path: Path) -> None:
    extra = tmp_path / "finder.yaml"
    extra.write_text("trainer:\n  callbacks+:\n    - class_path: lightning.pytorch.callbacks.LearningRateFinder\n")
    args = [
        "fit",
        f"--config={ROOT / 'configs/ppo.yaml'}",
        f"--config={extra}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    with pytest.raises(ValueError, match="LearningRateFinder cannot be used in an RL fit") as refused:
        cli(args)
    assert any(entry.name == "before_instantiate_classes" for entry in refused.traceback)  # from the config
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("config.yaml"))


def test_make_trainer_refuses_them_too(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LearningRateFinder cannot be used in an RL fit"):
        quiet_trainer(tmp_path, callbacks=[LearningRateFinder()])

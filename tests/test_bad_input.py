"""Bad values stop before any training, with a message naming the value and the fix."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    Strategy,
    XLAStrategy,
)

from rl_lightning import PPO, SAC, TRAINER_DEFAULTS, RLDataModule
from rl_lightning.callbacks import (
    BatchSubSampler,
    ClearCudaCache,
    FrameEarlyStopping,
    FunctionHook,
    LogValidationReward,
    RewardNormalizer,
    RolloutRecorder,
    TargetNetUpdaterHook,
)
from rl_lightning.cli import cli
from rl_lightning.compat import check_trainer, unsupported_strategy_reason
from rl_lightning.replay import ReplayBuffer
from tests.conftest import ROOT, tiny_ppo_run

BOX = gym.spaces.Box(-1.0, 1.0, (4,))


def test_unknown_env_id() -> None:
    with pytest.raises(ValueError, match=r"Unknown environment id 'NoSuchEnv-v9'.*registered"):
        RLDataModule("NoSuchEnv-v9")


def test_action_space_ppo_cannot_handle() -> None:
    with pytest.raises(ValueError, match=r"Action space Box\(.*\(2, 3\).*\) is not supported"):
        PPO(BOX, gym.spaces.Box(-1.0, 1.0, (2, 3)))


@pytest.mark.parametrize("lr", [0.0, -1e-3])
def test_non_positive_learning_rate(lr: float) -> None:
    with pytest.raises(ValueError, match=rf"lr={lr} is invalid: expected a value > 0"):
        PPO(BOX, gym.spaces.Discrete(2), lr=lr)


def test_total_frames_below_frames_per_batch() -> None:
    with pytest.raises(ValueError, match="total_frames=100 is below frames_per_batch=256"):
        RLDataModule("CartPole-v1", num_envs=8, frames_per_batch=256, total_frames=100)


def test_frames_per_batch_that_does_not_split_over_envs() -> None:
    with pytest.raises(
        ValueError,
        match=r"frames_per_batch=100 does not split evenly over num_envs=8.*e.g. frames_per_batch=96",
    ):
        RLDataModule("CartPole-v1", num_envs=8, frames_per_batch=100)


def test_minibatches_that_do_not_split_the_batch(tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, model={"batch_size": 48}, enable_checkpointing=True)
    with pytest.raises(ValueError, match="batch_size=48 does not split a batch of 64 transitions"):
        trainer.fit(model, datamodule=data)
    assert model.frames == 0
    assert not list(tmp_path.rglob("*.ckpt"))


def test_model_built_for_other_spaces(tmp_path: Path) -> None:
    trainer, _, data = tiny_ppo_run(tmp_path)
    other = PPO(gym.spaces.Box(-1.0, 1.0, (3,)), gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="'CartPole-v1' has observation space"):
        trainer.fit(other, datamodule=data)


@pytest.mark.filterwarnings("ignore:.*but have no `validation_step`")  # the module is a bare LightningModule
def test_the_data_refuses_a_module_that_is_not_an_rl_module(tmp_path: Path) -> None:
    class NotRL(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: Any) -> torch.Tensor:
            return self.layer(torch.ones(1)).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer, _, data = tiny_ppo_run(tmp_path)
    with pytest.raises(RuntimeError, match=r"collects with the policy of an RLModule, but the trainer holds .*NotRL"):
        trainer.fit(NotRL(), datamodule=data)


def test_missing_spaces_say_how_to_pass_them() -> None:
    with pytest.raises(ValueError, match="needs observation_space and action_space"):
        PPO()


def test_checkpoint_of_another_algorithm(tmp_path: Path) -> None:
    class OtherPPO(PPO):
        pass

    trainer, model, data = tiny_ppo_run(tmp_path, max_steps=1)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "ppo.ckpt")
    with pytest.raises(ValueError, match="holds a PPO model and cannot be loaded into OtherPPO"):
        OtherPPO.load_from_checkpoint(tmp_path / "ppo.ckpt")
    assert PPO.load_from_checkpoint(tmp_path / "ppo.ckpt").frames == model.frames


def _hand_built_trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    """A ``pl.Trainer`` built without :func:`make_trainer`, which checks only when the fit starts."""
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "accelerator": "cpu"}
    return pl.Trainer(**{**TRAINER_DEFAULTS, **quiet, "default_root_dir": tmp_path, **kwargs})


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true"])
def test_precisions_that_change_the_weights_dtype_are_refused(precision: str, tmp_path: Path) -> None:
    message = rf"precision='{precision}' is not supported.*bf16-mixed"
    with pytest.raises(ValueError, match=message):
        tiny_ppo_run(tmp_path, precision=precision)  # make_trainer checks the trainer it builds
    _, model, data = tiny_ppo_run(tmp_path)
    with pytest.raises(ValueError, match=message):
        _hand_built_trainer(tmp_path, precision=precision).fit(model, datamodule=data)
    assert model.frames == 0


def test_more_cpu_processes_than_cores_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 1)  # this machine's core count, seen as 1: two devices are too many
    message = r"devices=2 on the CPU starts 2 processes, but this machine has 1 CPU cores.*trainer.devices: 1"
    with pytest.raises(ValueError, match=message):
        tiny_ppo_run(tmp_path, devices=2, strategy="ddp")  # before a fit would start the DDP processes
    with pytest.raises(ValueError, match=message):
        check_trainer(_hand_built_trainer(tmp_path, devices=2, strategy="ddp"))
    assert not multiprocessing.active_children()


@pytest.mark.parametrize(
    "strategy", [FSDPStrategy, DeepSpeedStrategy, XLAStrategy, SingleDeviceXLAStrategy], ids=lambda s: s.__name__
)
def test_sharding_and_xla_strategies_are_refused(strategy: type[Strategy], tmp_path: Path) -> None:
    assert unsupported_strategy_reason(strategy) is not None  # subclasses of DDPStrategy or SingleDeviceStrategy
    trainer, _, _ = tiny_ppo_run(tmp_path)
    # Each needs a GPU, deepspeed or torch_xla to be built; the check reads the type.
    trainer.strategy.__class__ = strategy
    with pytest.raises(ValueError, match=rf"strategy={strategy.__name__} cannot train an RLModule.*strategy: ddp"):
        check_trainer(trainer)


def test_single_device_and_ddp_strategies_are_allowed() -> None:
    assert unsupported_strategy_reason(SingleDeviceStrategy) is None
    assert unsupported_strategy_reason(DDPStrategy) is None


@pytest.mark.parametrize(
    ("strategy", "start_method"), [("ddp_spawn", "spawn"), ("ddp_fork", "fork"), ("ddp_notebook", "fork")]
)
def test_strategies_started_by_multiprocessing_are_refused_before_any_process_starts(
    strategy: str, start_method: str, tmp_path: Path
) -> None:
    """Lightning's multiprocessing launcher sends only the weights and callback_metrics back: the counters and
    replay buffers would stay in the workers."""
    message = (
        rf"strategy=DDPStrategy\(start_method='{start_method}'\).*cannot train an RLModule.*counters.*do not come "
        r"back.*Use trainer.strategy: ddp"
    )
    with pytest.raises(ValueError, match=message):
        tiny_ppo_run(tmp_path, devices=2, strategy=strategy)
    assert not multiprocessing.active_children()
    with pytest.raises(ValueError, match=message):
        check_trainer(_hand_built_trainer(tmp_path, devices=2, strategy=strategy))
    assert not list(tmp_path.iterdir())


NAN, INF = math.nan, math.inf
BUILDERS: dict[str, Callable[..., Any]] = {
    "PPO": lambda **kw: PPO(BOX, gym.spaces.Discrete(2), **kw),
    "SAC": lambda **kw: SAC(BOX, gym.spaces.Box(-1.0, 1.0, (1,)), **kw),
    "RLDataModule": RLDataModule,
    "ReplayBuffer": lambda **kw: ReplayBuffer(**{"capacity": 100, **kw}),
    "BatchSubSampler": BatchSubSampler,
    "ClearCudaCache": ClearCudaCache,
    "FrameEarlyStopping": lambda **kw: FrameEarlyStopping("val/episode_return", **{"patience_frames": 10, **kw}),
    "FunctionHook": lambda **kw: FunctionHook("post_optim", print, **kw),
    "LogValidationReward": LogValidationReward,
    "RewardNormalizer": RewardNormalizer,
    "RolloutRecorder": RolloutRecorder,
    "TargetNetUpdaterHook": TargetNetUpdaterHook,
}
MEMMAP = {"buffer_storage": "memmap", "buffer_dir": "buffer"}  # relative: in the test's empty working directory
BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("PPO", {"lr": INF}, r"lr=inf is invalid: expected a finite value > 0"),
    ("PPO", {"optimizer_eps": 0.0}, r"optimizer_eps=0.0 is invalid: expected a value > 0\..*use e.g. 1e-5"),
    ("PPO", {"gamma": "0.99"}, r"gamma='0.99' is invalid: expected a number in \[0.0, 1.0\], not a str"),
    ("PPO", {"n_epochs": 2.5}, r"n_epochs=2.5 is invalid: expected an integer >= 1"),
    ("PPO", {"batch_size": "64"}, r"batch_size='64' is invalid: expected an integer >= 1"),
    ("PPO", {"value_coef": INF}, r"value_coef=inf is invalid: expected a finite value >= 0"),
    ("PPO", {"hidden_sizes": [64.5]}, r"hidden_sizes=\[64.5\] is invalid: expected a list of positive integer"),
    ("PPO", {"activation": "sigmoid"}, r"activation='sigmoid' is invalid: expected 'elu' or 'gelu'"),
    ("PPO", {"log_std_init": NAN}, r"log_std_init=nan is invalid: expected a finite number"),
    ("SAC", {"batch_size": 2.5}, r"batch_size=2.5 is invalid: expected an integer >= 1"),
    ("SAC", {"buffer_size": 0}, r"buffer_size=0 is invalid: expected an integer >= 1"),
    ("SAC", {"buffer_storage": "disk"}, r"buffer_storage='disk' is invalid: expected 'memory' or 'memmap'"),
    ("SAC", {"buffer_storage": "memmap"}, r"buffer_storage='memmap' needs buffer_dir.*buffer_storage='memory'"),
    ("SAC", {"buffer_dir": "buffer"}, r"buffer_dir='buffer' is only used with buffer_storage='memmap'"),
    ("SAC", {"priority_alpha": -0.1}, r"priority_alpha=-0.1 is invalid: expected a value >= 0"),
    ("SAC", {"prioritized": True, "priority_alpha": 7.0}, r"priority_alpha=7.0 is invalid: expected a value <= 6.3"),
    ("SAC", {"priority_beta": 1.5}, r"priority_beta=1.5 is invalid: expected a value in \[0.0, 1.0\]"),
    ("SAC", {"init_alpha": INF}, r"init_alpha=inf is invalid: expected a finite value > 0"),
    ("SAC", {"utd_ratio": INF}, r"utd_ratio=inf is invalid: expected a finite value > 0"),
    ("SAC", {"init_random_frames": 0.5}, r"init_random_frames=0.5 is invalid: expected an integer >= 0"),
    ("SAC", {"actor_lr": 0.0}, r"actor_lr=0.0 is invalid: expected a value > 0\..*null for lr"),
    ("SAC", {"target_update_interval": 0}, r"target_update_interval=0 is invalid: expected an integer >= 1"),
    ("SAC", {"target_entropy": NAN}, r"target_entropy=nan is invalid: expected a finite number"),
    # A memory-mapped buffer's directory is created only once every other value passed.
    ("SAC", {**MEMMAP, "activation": "sigmoid"}, r"activation='sigmoid' is invalid"),
    ("SAC", {**MEMMAP, "tau": 0.0}, r"tau=0.0 is invalid: expected a value in \(0.0, 1.0\]"),
    ("ReplayBuffer", {"storage": "memmap", "scratch_dir": "buffer", "beta": 2.0}, r"beta=2.0 is invalid"),
    ("ReplayBuffer", {"priority_eps": INF}, r"priority_eps=inf is invalid: expected a finite value > 0"),
    ("RLDataModule", {"num_envs": 2.0}, r"num_envs=2.0 is invalid: expected an integer >= 1"),
    ("RLDataModule", {"total_frames": 1e5}, r"total_frames=100000.0 is invalid: expected an integer >= 1"),
    ("RLDataModule", {"seed": -1}, r"seed=-1 is invalid: expected an integer >= 0.*null"),
    ("BatchSubSampler", {"batch_size": 3, "sub_traj_len": 1.5}, r"sub_traj_len=1.5 is invalid: expected an integer"),
    ("BatchSubSampler", {"batch_size": 4, "min_sub_traj_len": 0.5}, r"min_sub_traj_len=0.5 is invalid"),
    ("ClearCudaCache", {"interval": 2.5}, r"interval=2.5 is invalid: expected an integer >= 1"),
    ("FrameEarlyStopping", {"patience_frames": 1.5}, r"patience_frames=1.5 is invalid: expected an integer >= 0"),
    ("FrameEarlyStopping", {"min_delta": NAN}, r"min_delta=nan is invalid: expected a finite number"),
    ("FunctionHook", {"interval": 2.5}, r"interval=2.5 is invalid: expected an integer >= 1"),
    ("LogValidationReward", {"interval_frames": 2.5}, r"interval_frames=2.5 is invalid: expected an integer"),
    ("LogValidationReward", {"num_episodes": 2.5}, r"num_episodes=2.5 is invalid: expected an integer"),
    ("LogValidationReward", {"num_envs": 1.5}, r"num_envs=1.5 is invalid: expected an integer"),
    ("LogValidationReward", {"fps": INF}, r"fps=inf is invalid: expected a finite value > 0"),
    ("LogValidationReward", {"max_video_frames": 2.5}, r"max_video_frames=2.5 is invalid: expected an integer"),
    ("LogValidationReward", {"seed": -1}, r"seed=-1 is invalid: expected an integer >= 0"),
    ("RewardNormalizer", {"gamma": NAN}, r"gamma=nan is invalid: expected a value in \[0.0, 1.0\]"),
    ("RewardNormalizer", {"epsilon": INF}, r"epsilon=inf is invalid: expected a finite value > 0"),
    ("RewardNormalizer", {"clip": 0.0}, r"clip=0.0 is invalid: expected a value > 0"),
    ("RolloutRecorder", {"interval": 2.5}, r"interval=2.5 is invalid: expected an integer >= 1"),
    ("TargetNetUpdaterHook", {"interval": 2.5}, r"interval=2.5 is invalid: expected an integer >= 1"),
    ("TargetNetUpdaterHook", {"tau": 1.5}, r"tau=1.5 is invalid: expected a value in \(0.0, 1.0\]"),
]


@pytest.mark.parametrize(
    ("builder", "kwargs", "message"),
    BAD_VALUES,
    ids=[f"{b}({', '.join(f'{k}={v!r}' for k, v in kw.items())})" for b, kw, _ in BAD_VALUES],
)
def test_bad_constructor_values_are_refused_before_anything_is_written(
    builder: str, kwargs: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        BUILDERS[builder](**kwargs)
    assert not list(tmp_path.iterdir()), "a constructor that refused its arguments wrote files"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes (a link's target's), ``None`` for a directory."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def test_a_run_that_fails_its_validation_overwrites_nothing(tmp_path: Path) -> None:
    args = [
        "fit",
        f"--config={ROOT / 'configs/ppo.yaml'}",
        "--data.total_frames=512",
        "--model.init_args.n_epochs=1",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=1",
    ]
    cli(args)
    before = _snapshot(tmp_path)
    assert any(name.endswith(".ckpt") for name in before) and any(name.endswith("config.yaml") for name in before)
    with pytest.raises(ValueError, match=r"lr=-1(\.0)? is invalid: expected a value > 0"):
        cli([*args, "--model.init_args.lr=-1"])  # refused by the model's constructor
    assert _snapshot(tmp_path) == before
    with pytest.raises(ValueError, match=r"batch_size=100 does not split a batch of 256 transitions"):
        cli([*args, "--model.init_args.batch_size=100"])  # refused when the fit meets the data
    assert _snapshot(tmp_path) == before  # before the logger's new version directory or the saved config

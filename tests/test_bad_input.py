"""Bad values stop before any training, with a message naming the value and the fix."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest

from rl_lightning import PPO, RLDataModule
from tests.conftest import tiny_ppo_run

BOX = gym.spaces.Box(-1.0, 1.0, (4,))


def test_unknown_env_id() -> None:
    with pytest.raises(ValueError, match=r"Unknown environment id 'NoSuchEnv-v9'.*registered"):
        RLDataModule("NoSuchEnv-v9")


def test_action_space_ppo_cannot_handle() -> None:
    with pytest.raises(ValueError, match=r"Action space MultiBinary\(3\) is not supported"):
        PPO(BOX, gym.spaces.MultiBinary(3))


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
    trainer, model, data = tiny_ppo_run(tmp_path, model={"minibatch_size": 48}, enable_checkpointing=True)
    with pytest.raises(ValueError, match="minibatch_size=48 does not split a batch of 64 transitions"):
        trainer.fit(model, datamodule=data)
    assert model.frames == 0
    assert not list(tmp_path.rglob("*.ckpt"))


def test_model_built_for_other_spaces(tmp_path: Path) -> None:
    trainer, _, data = tiny_ppo_run(tmp_path)
    other = PPO(gym.spaces.Box(-1.0, 1.0, (3,)), gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="'CartPole-v1' has observation space"):
        trainer.fit(other, datamodule=data)


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


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true"])
def test_precisions_that_change_the_weights_dtype_are_refused(precision: str, tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, precision=precision)
    with pytest.raises(ValueError, match=rf"precision='{precision}' is not supported.*bf16-mixed"):
        trainer.fit(model, datamodule=data)
    assert model.frames == 0


def test_more_cpu_processes_than_cores_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 1)  # this machine's core count, seen as 1: two devices are too many
    trainer, _, _ = tiny_ppo_run(tmp_path, devices=2, strategy="ddp_spawn")
    from rl_lightning.compat import check_trainer

    with pytest.raises(ValueError, match=r"devices=2 on the CPU starts 2 processes, but this machine has 1 CPU cores"):
        check_trainer(trainer)


def test_sharding_strategies_are_refused(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from rl_lightning.compat import check_trainer

    trainer, _, _ = tiny_ppo_run(tmp_path)
    trainer.strategy.__class__ = FSDPStrategy  # FSDP itself needs a GPU to be built; the check reads the type
    with pytest.raises(ValueError, match=r"strategy=FSDPStrategy cannot train an RLModule.*strategy: ddp"):
        check_trainer(trainer)

"""Faults: NaN/inf in an update stops the run with a message (or is skipped on request), and what is on
disk stays intact."""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tensordict import TensorDict

from rl_lightning import PPO, RLCallback
from rl_lightning.checkpoint import RLCheckpointIO
from rl_lightning.collector import EnvError, evaluate
from rl_lightning.envs import Vectorization, make_vec_env
from tests.conftest import tiny_ppo_run

# gymnasium reports a failed async worker through warnings (its logger.error) before re-raising: expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(Received the following error from Worker|Raising the last exception|Traceback):UserWarning"
)


class PoisonLoss(RLCallback):
    """Turns ``loss_critic`` into NaN at the given updates (counted from 1)."""

    def __init__(self, at: set[int]) -> None:
        self.at = at
        self.params_before: list[torch.Tensor] = []
        self.unchanged: list[bool] = []  # per poisoned update: did its step leave every parameter as it was?

    def on_process_loss(self, trainer: Any, module: Any, batch: TensorDict, losses: TensorDict) -> TensorDict | None:
        if module.updates + 1 not in self.at:
            return None
        self.params_before = [p.detach().clone() for p in module.parameters()]
        losses = losses.clone(False)
        losses["loss_critic"] = losses["loss_critic"] * math.nan
        return losses

    def on_post_optim(self, trainer: Any, module: Any) -> None:
        if module.updates in self.at:
            same = [torch.equal(a, b) for a, b in zip(self.params_before, module.parameters(), strict=True)]
            self.unchanged.append(all(same))


def test_nan_gradients_stop_the_run_naming_the_update_the_loss_and_the_last_checkpoint(tmp_path: Path) -> None:
    last = ModelCheckpoint(tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[PoisonLoss({9}), last], enable_checkpointing=True)
    with pytest.raises(FloatingPointError) as error:
        trainer.fit(model, datamodule=data)
    message = str(error.value)
    assert "NaN or inf loss at update 9 " in message and "loss_critic=nan" in message and "loss_objective=" in message
    assert str(tmp_path / "ckpt" / "last.ckpt") in message and "nonfinite: skip" in message
    saved = RLCheckpointIO().load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert saved["rl_lightning"]["updates"] == 8  # 2 batches of 4 updates: written before the bad step
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_nonfinite_skip_leaves_the_parameters_and_goes_on(tmp_path: Path) -> None:
    poison = PoisonLoss({3, 7})
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[poison], model={"nonfinite": "skip"})
    trainer.fit(model, datamodule=data)
    assert model.skipped_updates == 2 and model.updates == 16
    assert poison.unchanged == [True, True]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.frames == data.total_frames


def test_a_bad_nonfinite_value_is_named() -> None:
    import gymnasium as gym

    with pytest.raises(ValueError, match="nonfinite='ignore' is invalid"):
        PPO(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), nonfinite="ignore")  # type: ignore[arg-type]


def _fit_with_faulty_env(tmp_path: Path, vectorization: str, **wrapper: Any) -> tuple[EnvError, Path]:
    spec = {"class_path": "tests.faulty_env.RaiseAfter", "init_args": wrapper}
    last = ModelCheckpoint(tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer, model, data = tiny_ppo_run(
        tmp_path,
        data={"total_frames": 1024, "wrappers": [spec], "vectorization": vectorization},
        callbacks=[last],
        enable_checkpointing=True,
    )
    with pytest.raises(EnvError) as error:
        trainer.fit(model, datamodule=data)
    # the failed envs are closed: no env subprocess outlives the fit (they used to linger until interpreter exit)
    assert multiprocessing.active_children() == []
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]  # no half-written file
    return error.value, tmp_path / "ckpt" / "last.ckpt"


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_an_env_that_raises_is_named_with_its_index_and_frame(tmp_path: Path, vectorization: str) -> None:
    # env 2 of 4 raises at its 40th step: the 3rd batch of 16 steps (64 frames), 32 frames into the fit's 3rd batch
    error, last = _fit_with_faulty_env(tmp_path, vectorization, steps=40, env_index=2)
    message = str(error)
    assert "Environment 'CartPole-v1': env 2 raised ValueError: the simulator exploded" in message
    assert "after 156 frames collected by this process" in message  # 2 batches of 64, then 7 steps x 4 envs
    assert error.index == 2 and isinstance(error.__cause__, ValueError)
    checkpoint = RLCheckpointIO().load_checkpoint(last)
    assert checkpoint["rl_lightning"]["frames"] == 128  # written after the 2nd batch, intact


@pytest.mark.parametrize("env_index", [0, 3])
def test_an_async_env_worker_that_dies_is_named(tmp_path: Path, env_index: int) -> None:
    # env 0: gymnasium's own close then fails on the dead pipe while waiting for the pending step
    error, last = _fit_with_faulty_env(tmp_path, "async", steps=40, env_index=env_index, exit_process=True)
    assert f"the subprocess of env {env_index} died (exit code 3" in str(error) and error.index == env_index
    assert RLCheckpointIO().load_checkpoint(last)["rl_lightning"]["frames"] == 128


def _balance(obs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Keeps CartPole up for well over 60 steps: no episode ends before the faulty env's step."""
    return {"action": (obs[:, 2] + 0.5 * obs[:, 3] > 0).long()}


def _faulty_spec(**init_args: Any) -> dict[str, Any]:
    return {"class_path": "tests.faulty_env.RaiseAfter", "init_args": init_args}


@pytest.mark.parametrize(("vectorization", "exit_process"), [("sync", False), ("async", False), ("async", True)])
def test_an_env_that_fails_in_evaluation_is_named_and_the_envs_are_closed(
    vectorization: Vectorization, exit_process: bool
) -> None:
    spec = _faulty_spec(steps=5, env_index=1, exit_process=exit_process)
    envs = make_vec_env("CartPole-v1", 2, [spec], vectorization=vectorization)
    with pytest.raises(EnvError) as error:
        evaluate(envs, _balance, num_episodes=4, seed=0, env_id="CartPole-v1")
    message = str(error.value)
    what = "the subprocess of env 1 died (exit code 3" if exit_process else "env 1 raised ValueError: the simulator"
    assert f"Environment 'CartPole-v1': {what}" in message and "during evaluation, after 8 frames" in message
    assert error.value.index == 1 and error.value.evaluation and error.value.rank is None
    assert envs.closed and multiprocessing.active_children() == []  # closed by force: no worker outlives the error


def test_an_env_error_names_the_rank_under_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # what Lightning's launchers set in each DDP process
    monkeypatch.setenv("WORLD_SIZE", "2")
    envs = make_vec_env("CartPole-v1", 2, [_faulty_spec(steps=5, env_index=1)])
    with pytest.raises(EnvError, match=r"^Environment 'CartPole-v1' on rank 1 of 2: env 1 raised") as error:
        evaluate(envs, _balance, num_episodes=4, seed=0, env_id="CartPole-v1")
    assert error.value.rank == 1


def test_an_async_eval_worker_that_dies_in_validation_is_named(tmp_path: Path) -> None:
    # every eval env's worker exits at its 5th step; the validation loop's envs are the data module's own
    spec = _faulty_spec(steps=5, env_index=None, exit_process=True)
    trainer, model, data = tiny_ppo_run(tmp_path, data={"wrappers": [spec], "vectorization": "async"})
    with pytest.raises(EnvError, match=r"^Environment 'CartPole-v1': the subprocess of env \d died") as error:
        trainer.validate(model, datamodule=data)
    assert error.value.evaluation and "during evaluation, after 8 frames" in str(error.value)
    assert multiprocessing.active_children() == []

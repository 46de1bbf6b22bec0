"""UpdateWeights in the core environment: its arguments, its state, and its refusal of data without a policy copy.
Its pushes to a multi-process torchrl collector are tested in tests/test_torchrl_data.py (torchrl environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_lightning import PPO, RLDataModule
from rl_lightning.callbacks import UpdateWeights
from tests.conftest import quiet_trainer


def test_bad_interval_names_the_value() -> None:
    with pytest.raises(ValueError, match="interval"):
        UpdateWeights(interval=0)


def test_its_batch_count_is_checkpointed() -> None:
    hook = UpdateWeights(interval=3)
    hook.batches = 7
    resumed = UpdateWeights(interval=3)
    resumed.load_state_dict(hook.state_dict())
    assert resumed.batches == 7


def test_data_whose_collector_runs_the_modules_own_policy_is_refused_before_collecting(tmp_path: Path) -> None:
    data = RLDataModule("CartPole-v1", num_envs=2, frames_per_batch=32, total_frames=64, eval_episodes=1)
    model = PPO(data.observation_space, data.action_space, hidden_sizes=[8], batch_size=32)
    trainer = quiet_trainer(tmp_path, callbacks=[UpdateWeights()])
    with pytest.raises(ValueError, match=r"the data \(RLDataModule\) has no update_policy_weights_\(\).*Remove"):
        trainer.fit(model, datamodule=data)
    assert model.frames == 0

"""What every algorithm must do, checked for each: train and reload, train under bf16, resume bit-identically, run
the RL hooks in order, and work with the hook classes. One tiny set-up per algorithm (``TINY``)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

import rl_lightning
from rl_lightning import RL_HOOKS, RLModule
from rl_lightning.callbacks import CountFramesLog, LogScalar, LogTiming, RewardNormalizer
from rl_lightning.checkpoint import RLCheckpointIO
from tests.conftest import quiet_trainer
from tests.probe import SaveRankState
from tests.test_resume import _assert_resumed_state_is_the_checkpoint
from tests.test_rl_loop import Recorder

OFF_POLICY = {"hidden_sizes": [16], "batch_size": 32, "buffer_size": 1000, "init_random_frames": 64}
TINY: dict[str, tuple[str, dict[str, Any]]] = {
    "A2C": ("CartPole-v1", {"hidden_sizes": [16]}),
    "DDPG": ("Pendulum-v1", OFF_POLICY),
    "DQN": ("CartPole-v1", {**OFF_POLICY, "utd_ratio": 0.5, "target_update_interval": 8}),
    "PPO": ("CartPole-v1", {"n_epochs": 2, "batch_size": 32, "hidden_sizes": [16]}),
    "SAC": ("Pendulum-v1", OFF_POLICY),
    "TD3": ("Pendulum-v1", OFF_POLICY),
}
"""Per algorithm: the env and the model's arguments of a run of 8 batches of 2 envs x 16 steps."""
ALGORITHMS = sorted(TINY)


def tiny(
    name: str, total_frames: int = 256, seed: int = 0, arguments: dict[str, Any] | None = None
) -> tuple[RLModule, rl_lightning.RLDataModule]:
    """The algorithm ``name`` with its ``TINY`` arguments (or ``arguments``), and its data."""
    pl.seed_everything(seed)
    env, options = TINY[name]
    data = rl_lightning.RLDataModule(env, num_envs=2, frames_per_batch=32, total_frames=total_frames, eval_episodes=2)
    cls = getattr(rl_lightning, name)
    return cls(data.observation_space, data.action_space, **(options if arguments is None else arguments)), data


def observations(model: RLModule, count: int = 5) -> torch.Tensor:
    """A fixed batch of observations from the model's observation space."""
    model.observation_space.seed(1)
    return torch.as_tensor(np.stack([model.observation_space.sample() for _ in range(count)]), dtype=torch.float32)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_trains_under_bf16_with_the_hook_classes_and_reloads_to_the_same_policy(tmp_path: Path, name: str) -> None:
    model, data = tiny(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: set[torch.dtype] = set()
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, out: seen.add(out.dtype) if torch.is_grad_enabled() else None)
    recorder = Recorder()
    hooks = [CountFramesLog(), LogScalar(), LogTiming(), RewardNormalizer(), recorder]
    trainer = quiet_trainer(
        tmp_path, precision="bf16-mixed", logger=CSVLogger(tmp_path), log_every_n_steps=1, callbacks=hooks
    )
    trainer.fit(model, datamodule=data)
    assert model.frames == 256 and model.updates > 0
    assert torch.bfloat16 in seen  # the networks ran under autocast in the updates
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained

    metrics = trainer.logged_metrics
    for key in ("n_frames", "rollout/next.reward", "time/batch", "train/loss"):
        assert key in metrics, (key, sorted(metrics))
    assert metrics["n_frames"] == 256
    assert hooks[3].count.item() == 256  # every collected reward fed the normalizer's statistics
    assert_hooks_in_order([c for c in recorder.calls if c in RL_HOOKS])

    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = type(model).load_from_checkpoint(tmp_path / "model.ckpt")
    assert loaded.hparams == model.hparams
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    probe = observations(model)
    assert torch.equal(loaded.act(probe, deterministic=True)["action"], model.act(probe, deterministic=True)["action"])


def assert_hooks_in_order(calls: list[str]) -> None:
    """Every hook point is reached, and within a batch the hooks advance through ``RL_HOOKS``, looping only over
    the steps of an epoch and over the epochs."""
    assert set(calls) == set(RL_HOOKS)
    order = {hook: i for i, hook in enumerate(RL_HOOKS)}
    step = order["on_process_optim_batch"], order["on_post_optim_log"]
    epoch = order["on_pre_epoch"], order["on_post_epoch_log"]
    for previous, current in itertools.pairwise(calls):
        loops = (order[current] == step[0] and order[previous] in (order["on_pre_epoch_log"], step[1])) or (
            order[current] == epoch[0] and order[previous] in (order["on_pre_optim_steps"], epoch[1])
        )
        assert order[current] > order[previous] or loops or current == "on_batch_process", (previous, current)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_a_resumed_run_starts_from_the_checkpoint_bit_for_bit_and_is_reproducible(tmp_path: Path, name: str) -> None:
    """The restored state (networks, targets, optimizer, counters, replay buffer) is the checkpoint's, bit for bit;
    the envs restart from a reset (they cannot be saved), seeded from the checkpoint, so two resumes of one
    checkpoint are identical runs."""
    model, data = tiny(name, total_frames=128)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(tmp_path, enable_checkpointing=True, callbacks=[checkpoint]).fit(model, datamodule=data)
    saved = tmp_path / "ckpt" / "last.ckpt"
    finals = []
    for attempt in range(2):
        resumed, data = tiny(name, total_frames=256, seed=attempt)  # another global seed: the checkpoint's RNG wins
        probe = SaveRankState(str(tmp_path / f"start{attempt}"), at_start=True)
        quiet_trainer(tmp_path / f"resume{attempt}", callbacks=[probe]).fit(resumed, datamodule=data, ckpt_path=saved)
        at_start = torch.load(tmp_path / f"start{attempt}" / "rank0.pt", weights_only=True)
        checkpoint = RLCheckpointIO().load_checkpoint(saved)
        _assert_resumed_state_is_the_checkpoint(at_start, checkpoint)
        if "buffer" in at_start:
            (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ReplayBufferTrainer")]
            for key, value in state["per_rank"][0]["buffer"]["data"].items():
                assert torch.equal(at_start["buffer"]["data"][key], value), key
        assert resumed.frames == 256
        finals.append(resumed)
    first, second = finals
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
    if hasattr(first, "replay_buffer"):
        for key, value in first.replay_buffer.state_dict()["data"].items():
            assert torch.equal(second.replay_buffer.state_dict()["data"][key], value), key
    assert first.updates == second.updates > model.updates

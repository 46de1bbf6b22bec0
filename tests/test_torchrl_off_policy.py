"""torchrl off-policy losses (SACLoss, TD3Loss, DQNLoss) trained on replay samples as a TorchRLOffPolicyModule, and
both torchrl adapters under DDP. Runs in the torchrl environment (``bash scripts/setup_torchrl.sh``), skipped
elsewhere.

Run as ``python -m tests.test_torchrl_off_policy ddp <on|off> <dir>``, it is the script of the DDP tests: Lightning's
launcher starts it again for rank 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from tensordict import TensorDict
from torch import nn

pytest.importorskip(
    "torchrl", reason="torchrl is not importable here: run these tests in .venv-torchrl (scripts/setup_torchrl.sh)"
)

from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data import Categorical as CategoricalSpec
from torchrl.modules import (
    MLP,
    AdditiveGaussianModule,
    EGreedyModule,
    ProbabilisticActor,
    QValueActor,
    TanhModule,
    TanhNormal,
    ValueOperator,
)
from torchrl.objectives import DQNLoss, HardUpdate, SACLoss, SoftUpdate, TD3Loss

from rl_lightning import RL_HOOKS, RLDataModule, keys
from rl_lightning.callbacks import ReplayBufferTrainer, TargetNetUpdaterHook
from rl_lightning.interop.torchrl_off_policy import TorchRLOffPolicyModule, TorchRLReplay
from tests.conftest import ROOT, quiet_trainer
from tests.test_algorithms import assert_hooks_in_order
from tests.test_rl_loop import Recorder

PENDULUM_SPEC = Bounded(-2.0, 2.0, (1,))


def sac_parts(hidden: int = 16, gamma: float = 0.99, tau: float = 0.005) -> tuple[SACLoss, SoftUpdate]:
    """A torchrl SAC for Pendulum as a torchrl user writes it: a tanh-Gaussian actor, twin Q networks, SACLoss."""
    actor_net = nn.Sequential(
        MLP(in_features=3, out_features=2, num_cells=[hidden, hidden], activation_class=nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0"),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=PENDULUM_SPEC,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -2.0, "high": 2.0},
    )
    qvalue = ValueOperator(
        MLP(in_features=4, out_features=1, num_cells=[hidden, hidden], activation_class=nn.ReLU),
        in_keys=["observation", "action"],
    )
    loss = SACLoss(actor, qvalue, num_qvalue_nets=2, loss_function="l2", action_spec=PENDULUM_SPEC)
    loss.make_value_estimator(gamma=gamma)
    return loss, SoftUpdate(loss, tau=tau)


def td3_parts(hidden: int = 16) -> tuple[TD3Loss, SoftUpdate, TensorDictSequential]:
    """A torchrl TD3 for Pendulum: a deterministic tanh actor, Gaussian exploration noise around it, TD3Loss."""
    actor = TensorDictSequential(
        TensorDictModule(MLP(in_features=3, out_features=1, num_cells=[hidden]), ["observation"], ["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=PENDULUM_SPEC),
    )
    qvalue = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[hidden]), in_keys=["observation", "action"])
    loss = TD3Loss(actor, qvalue, action_spec=PENDULUM_SPEC, num_qvalue_nets=2)
    noise = AdditiveGaussianModule(spec=PENDULUM_SPEC, sigma_init=0.5, sigma_end=0.1, annealing_num_steps=256)
    return loss, SoftUpdate(loss, tau=0.01), TensorDictSequential(actor, noise)


def dqn_parts(hidden: int = 16) -> tuple[DQNLoss, HardUpdate, TensorDictSequential]:
    """A torchrl DQN for CartPole: a QValueActor writing integer actions, ε-greedy around it, DQNLoss."""
    qvalue = QValueActor(
        MLP(in_features=4, out_features=2, num_cells=[hidden]), in_keys=["observation"], spec=CategoricalSpec(2)
    )
    loss = DQNLoss(qvalue, action_space="categorical", delay_value=True)
    greedy = EGreedyModule(spec=CategoricalSpec(2), eps_init=1.0, eps_end=0.1, annealing_num_steps=256)
    return loss, HardUpdate(loss, value_network_update_interval=4), TensorDictSequential(qvalue, greedy)


def pendulum(**overrides: Any) -> RLDataModule:
    settings: dict[str, Any] = {"num_envs": 2, "frames_per_batch": 32, "total_frames": 128, "eval_episodes": 1}
    return RLDataModule("Pendulum-v1", **{**settings, **overrides})


def cartpole(**overrides: Any) -> RLDataModule:
    settings: dict[str, Any] = {"num_envs": 2, "frames_per_batch": 32, "total_frames": 128, "eval_episodes": 1}
    return RLDataModule("CartPole-v1", **{**settings, **overrides})


def build(name: str, data: RLDataModule, **model: Any) -> TorchRLOffPolicyModule:
    """A small TorchRLOffPolicyModule of ``name`` (sac, td3, dqn) for ``data``."""
    settings: dict[str, Any] = {"batch_size": 16, "buffer_size": 1000, "init_random_frames": 32, "utd_ratio": 0.25}
    if name == "sac":
        loss, updater = sac_parts()
        policy = None
    elif name == "td3":
        loss, updater, policy = td3_parts()
    else:
        loss, updater, policy = dqn_parts()
    return TorchRLOffPolicyModule(
        data.observation_space, data.action_space, loss, policy, target_updater=updater, **{**settings, **model}
    )


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize(("name", "env"), [("sac", "pendulum"), ("td3", "pendulum"), ("dqn", "cartpole")])
def test_off_policy_losses_train_with_every_rl_hook_in_order(tmp_path: Path, name: str, env: str) -> None:
    """Each loss trains on replay samples after the warm-up, through every RL hook in order, under bf16 (SAC); its
    targets move, the policy it collects with is the one it trains, exploration anneals."""
    pl.seed_everything(0)
    data = pendulum() if env == "pendulum" else cartpole()
    model = build(name, data)
    before = parameters(model)
    observation = torch.randn(5, *data.observation_space.shape)  # type: ignore[misc]
    output = "action_value" if name == "dqn" else keys.ACTION  # DQN's greedy actions may not change yet: its Q-values

    def deterministic() -> torch.Tensor:
        return model.run_policy(model.actor, observation, deterministic=True).get(output)

    greedy_before = deterministic()
    recorder = Recorder()
    precision = "bf16-mixed" if name == "sac" else "32-true"
    trainer = quiet_trainer(tmp_path, precision=precision, log_every_n_steps=1, callbacks=[recorder])
    trainer.fit(model, datamodule=data)

    assert model.frames == 128 and model.updates == 3 * 32 // 4  # 3 batches after the random one, 8 updates each
    assert_hooks_in_order([c for c in recorder.calls if c in RL_HOOKS])
    assert len(model.replay_buffer) == 128
    after = parameters(model)
    moved = {key for key in before if not torch.equal(before[key], after[key])}
    assert any("target_" in key for key in moved), "the target updater moved no target parameter"
    assert any(key.startswith("actor.") for key in moved)  # the policy shares the loss's trained weights
    assert not torch.equal(deterministic(), greedy_before)
    assert all(torch.isfinite(trainer.callback_metrics[f"train/{k}"]) for k in ("loss",))
    if name != "sac":  # the exploration module was stepped by the 128 frames
        exploration = model.exploration[0]
        noise = exploration.eps if name == "dqn" else exploration.sigma
        assert 0.1 < float(noise) < (1.0 if name == "dqn" else 0.5)

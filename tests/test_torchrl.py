"""torchrl interop: a torchrl loss and policy trained as a TorchRLModule. Runs in the torchrl environment
(``bash scripts/setup_torchrl.sh``; torchrl 0.14 needs tensordict<0.15, the core pins 0.15), skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from tensordict import TensorDict
from torch import nn

pytest.importorskip(
    "torchrl", reason="torchrl is not importable here: run these tests in .venv-torchrl (scripts/setup_torchrl.sh)"
)

from tensordict.nn import TensorDictModule
from torch.distributions import Categorical
from torchrl.data import Categorical as CategoricalSpec
from torchrl.modules import MLP, ProbabilisticActor, QValueActor, ValueOperator
from torchrl.objectives import A2CLoss, ClipPPOLoss, DQNLoss, HardUpdate, SoftUpdate
from torchrl.objectives.value import GAE

from rl_lightning import RL_HOOKS, RLCallback, RLDataModule, RLModule, keys
from rl_lightning.callbacks import CountFramesLog, LogScalar, RewardNormalizer, TargetNetUpdaterHook
from rl_lightning.functional import generalized_advantage_estimate
from rl_lightning.interop.torchrl_module import TorchRLModule
from tests.conftest import quiet_trainer
from tests.test_algorithms import assert_hooks_in_order
from tests.test_rl_loop import Recorder


def ppo_parts(hidden: int = 16, gamma: float = 0.99, lmbda: float = 0.95) -> tuple[ClipPPOLoss, GAE]:
    """A torchrl PPO for CartPole as a torchrl user writes it: actor, critic, ClipPPOLoss, GAE."""
    actor_net = nn.Sequential(
        nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2)
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=Categorical,
        return_log_prob=True,
    )
    critic_net = nn.Sequential(
        nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
    )
    critic = ValueOperator(critic_net, in_keys=["observation"])
    loss = ClipPPOLoss(
        actor, critic, clip_epsilon=0.2, entropy_coeff=0.0, critic_coeff=0.5, loss_critic_type="l2",
        normalize_advantage=True,
    )  # fmt: skip
    return loss, GAE(gamma=gamma, lmbda=lmbda, value_network=critic)


def dqn_loss(hidden: int = 16) -> DQNLoss:
    """A torchrl DQN for CartPole: a QValueActor writing integer actions, and a DQNLoss with a target copy."""
    actor = QValueActor(
        MLP(in_features=4, out_features=2, num_cells=[hidden]), in_keys=["observation"], spec=CategoricalSpec(2)
    )
    return DQNLoss(actor, action_space="categorical", delay_value=True)


def tiny_data(**overrides: int) -> RLDataModule:
    return RLDataModule(
        **{
            "env_id": "CartPole-v1",
            "num_envs": 4,
            "frames_per_batch": 64,
            "total_frames": 256,
            "eval_episodes": 2,
            **overrides,
        }
    )


def test_torchrl_gae_reads_a_collected_batch_as_rl_lightnings_gae_does() -> None:
    """The data contract: torchrl's GAE on a batch ``[num_envs, T]`` with a truncation and a termination gives
    rl_lightning's advantages (bootstrapped on truncation, not on termination)."""
    torch.manual_seed(0)
    n, t = 2, 5
    terminated = torch.zeros(n, t, 1, dtype=torch.bool)
    truncated = torch.zeros(n, t, 1, dtype=torch.bool)
    terminated[0, 1] = True
    truncated[1, 2] = True
    batch = TensorDict(
        {
            keys.OBSERVATION: torch.randn(n, t, 4),
            keys.NEXT: {
                keys.OBSERVATION: torch.randn(n, t, 4),
                keys.REWARD: torch.randn(n, t, 1),
                keys.TERMINATED: terminated,
                keys.TRUNCATED: truncated,
                keys.DONE: terminated | truncated,
            },
        },
        batch_size=[n, t],
    )
    _, gae = ppo_parts(gamma=0.9, lmbda=0.8)
    critic = gae.value_network
    with torch.no_grad():
        gae(batch)
        value = critic(batch.select(keys.OBSERVATION))[keys.STATE_VALUE]
        next_value = critic(batch[keys.NEXT].select(keys.OBSERVATION))[keys.STATE_VALUE]
    advantage, target = generalized_advantage_estimate(
        batch[keys.NEXT_REWARD], value, next_value, terminated, terminated | truncated, 0.9, 0.8
    )
    torch.testing.assert_close(batch[keys.ADVANTAGE], advantage)
    torch.testing.assert_close(batch[keys.VALUE_TARGET], target)


def test_clip_ppo_loss_trains_and_its_checkpoint_loads_into_the_same_modules(tmp_path: Path) -> None:
    pl.seed_everything(0)
    loss, gae = ppo_parts()
    data = tiny_data()
    model = TorchRLModule(data.observation_space, data.action_space, loss, advantage=gae, n_epochs=2, batch_size=32)
    before = [p.detach().clone() for p in model.parameters()]
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(tmp_path, val_check_interval=2, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(model, datamodule=data)

    assert model.frames == 256 and model.updates == 4 * 2 * 2  # batches x epochs x minibatches
    assert trainer.callback_metrics["train/loss_objective"].isfinite()
    assert "train/explained_variance" in trainer.callback_metrics  # torchrl's [1] diagnostic, as a scalar
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))

    rebuilt, rebuilt_gae = ppo_parts()
    loaded = TorchRLModule.load_from_checkpoint(checkpoint.last_model_path, loss_module=rebuilt, advantage=rebuilt_gae)
    assert loaded.frames == 256 and loaded.hparams["batch_size"] == 32
    for ours, theirs in zip(model.parameters(), loaded.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)
    observation = torch.randn(8, 4)
    torch.testing.assert_close(loaded(observation), model(observation))  # the deterministic policy: the same actions

    actor = rebuilt.actor_network
    other = A2CLoss(actor, rebuilt.critic_network)
    with pytest.raises(ValueError, match=r"trained with the torchrl loss .*ClipPPOLoss.* wraps .*A2CLoss"):
        TorchRLModule.load_from_checkpoint(checkpoint.last_model_path, loss_module=other)


def test_without_a_batch_size_each_update_trains_on_the_whole_batch(tmp_path: Path) -> None:
    """``batch_size=None``: one update per epoch on all of the batch's transitions (which the collector wrote under
    inference mode: the loss must still be able to backpropagate through what it computes from them)."""
    pl.seed_everything(0)
    loss, gae = ppo_parts()
    data = tiny_data()
    model = TorchRLModule(data.observation_space, data.action_space, loss, advantage=gae, n_epochs=3)
    sizes = MinibatchKeys()
    quiet_trainer(tmp_path, callbacks=[sizes]).fit(model, datamodule=data)
    assert model.updates == 4 * 3 and sizes.sizes == [64] * 12


class MinibatchKeys(RLCallback):
    """Records the keys and the number of transitions of every minibatch the loss is given."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []
        self.sizes: list[int] = []

    def on_process_optim_batch(self, trainer: pl.Trainer, pl_module: RLModule, batch: TensorDict) -> None:
        self.keys.append(set(batch.keys()))
        self.sizes.append(batch.numel())


def test_runs_every_rl_hook_in_order_with_the_hook_classes_under_bf16(tmp_path: Path) -> None:
    pl.seed_everything(0)
    loss, gae = ppo_parts()
    data = tiny_data()
    model = TorchRLModule(data.observation_space, data.action_space, loss, advantage=gae, n_epochs=2, batch_size=32)
    recorder, minibatches = Recorder(), MinibatchKeys()
    normalizer = RewardNormalizer()
    trainer = quiet_trainer(
        tmp_path, precision="bf16-mixed", log_every_n_steps=1, callbacks=[CountFramesLog(), LogScalar(), normalizer,
        recorder, minibatches]
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert normalizer.gamma is None and model.gamma == pytest.approx(0.99)  # the normalizer took GAE's discount
    # GAE ran in prepare_batch, before the loss (which would otherwise estimate advantages with its own defaults)
    assert len(minibatches.keys) == model.updates == 16
    assert all({keys.ADVANTAGE, keys.VALUE_TARGET} <= names for names in minibatches.keys)
    assert_hooks_in_order([c for c in recorder.calls if c in RL_HOOKS])
    assert normalizer.count.item() == 256  # the batches the loss trained on went through the data-processing hooks
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in model.parameters())


def test_two_resumes_of_one_checkpoint_are_the_same_run(tmp_path: Path) -> None:
    """Weights, Adam's state, counters and RNG come back from the checkpoint: two resumes with different global
    seeds end with the same weights."""
    pl.seed_everything(0)
    loss, gae = ppo_parts()
    data = tiny_data(total_frames=128)
    model = TorchRLModule(data.observation_space, data.action_space, loss, advantage=gae, n_epochs=2, batch_size=32)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(tmp_path, enable_checkpointing=True, callbacks=[checkpoint]).fit(model, datamodule=data)
    finals = []
    for attempt in range(2):
        pl.seed_everything(attempt + 1)  # the checkpoint's RNG states win
        loss, gae = ppo_parts()
        resumed = TorchRLModule(data.observation_space, data.action_space, loss, advantage=gae, n_epochs=2,
                                batch_size=32)  # fmt: skip
        trainer = quiet_trainer(tmp_path / f"resume{attempt}")
        trainer.fit(resumed, datamodule=tiny_data(), ckpt_path=checkpoint.last_model_path)
        assert resumed.frames == 256 and resumed.updates == 2 * model.updates
        finals.append(resumed.state_dict())
    for key, value in finals[0].items():
        assert torch.equal(finals[1][key], value), key


def test_bad_arguments_name_the_value_and_the_fix() -> None:
    data = tiny_data()
    with pytest.raises(TypeError, match="not a torchrl LossModule"):
        TorchRLModule(data.observation_space, data.action_space, nn.Linear(4, 2))  # type: ignore[arg-type]
    loss, _ = ppo_parts()
    model = TorchRLModule(data.observation_space, data.action_space, loss, batch_size=48)
    with pytest.raises(ValueError, match="batch_size=48 does not split a batch of 64 transitions"):
        model.check_data(data)


@pytest.mark.learning
def test_torchrl_clip_ppo_loss_solves_cartpole(tmp_path: Path) -> None:
    """torchrl's ClipPPOLoss and GAE, with configs/ppo.yaml's hyperparameters, reach 475 in deterministic
    evaluation before the budget runs out."""
    pl.seed_everything(0)
    torch.set_num_threads(1)
    loss, gae = ppo_parts(hidden=64, gamma=0.98, lmbda=0.8)
    data = RLDataModule("CartPole-v1", num_envs=8, frames_per_batch=256, total_frames=100_000, seed=0, eval_episodes=10)
    model = TorchRLModule(
        data.observation_space, data.action_space, loss, advantage=gae, lr=1e-3, n_epochs=20, batch_size=256,
        max_grad_norm=0.5,
    )  # fmt: skip
    stop = EarlyStopping("val/episode_return", mode="max", stopping_threshold=475.0, patience=10**6,
                         check_on_train_epoch_end=False)  # fmt: skip
    trainer = quiet_trainer(tmp_path, val_check_interval=10, callbacks=[stop])
    trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics["val/episode_return"] >= 475.0
    assert model.frames < data.total_frames


def online_and_target(loss: DQNLoss) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The Q network's parameters and their target copies (buffers of the loss module), cloned."""
    online = loss.value_network_params.flatten_keys()
    target = loss.target_value_network_params.flatten_keys()
    names = sorted(online.keys())
    return [online[k].detach().clone() for k in names], [target[k].detach().clone() for k in names]


class TargetRecorder(RLCallback):
    """After every update (``on_post_optim_log`` runs after the module stepped its target updater): the online and
    target parameters."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def on_post_optim_log(self, trainer: pl.Trainer, pl_module: RLModule, batch: TensorDict) -> None:
        assert isinstance(pl_module, TorchRLModule)
        self.snapshots.append(online_and_target(pl_module.loss_module))


class NaNLossAt(RLCallback):
    """Makes the loss of one update NaN (that update is then skipped with ``nonfinite="skip"``)."""

    def __init__(self, update: int) -> None:
        self.update = update

    def on_process_loss(self, trainer: pl.Trainer, pl_module: RLModule, batch: TensorDict, losses: TensorDict) -> None:
        if pl_module.updates + 1 == self.update:
            losses["loss_objective"] = losses["loss_objective"] * float("nan")  # DQNLoss's "loss"


def test_soft_update_moves_the_targets_by_tau_after_each_applied_update_only(tmp_path: Path) -> None:
    """torchrl's SoftUpdate, stepped by the module: after each update, target = (1 - tau) target + tau online
    (computed here by hand from the recorded weights); the update skipped for a NaN loss moves nothing."""
    pl.seed_everything(0)
    loss = dqn_loss()
    data = tiny_data(total_frames=64)
    tau = 0.25
    model = TorchRLModule(
        data.observation_space, data.action_space, loss, loss.value_network, batch_size=16, nonfinite="skip",
        target_updater=SoftUpdate(loss, tau=tau),
    )  # fmt: skip
    assert model.hparams["_target_update"] == "SoftUpdate(tau=0.25)"
    online0, target0 = online_and_target(loss)
    assert all(torch.equal(o, t) for o, t in zip(online0, target0, strict=True))  # torchrl copied them at the start
    recorder = TargetRecorder()
    quiet_trainer(tmp_path, callbacks=[recorder, NaNLossAt(update=3)]).fit(model, datamodule=data)

    assert model.updates == 4 and model.skipped_updates == 1
    target = target0
    for update, (online_after, target_after) in enumerate(recorder.snapshots, start=1):
        if update == 3:  # skipped: neither the online weights nor the targets moved
            expected = target
        else:
            expected = [(1 - tau) * t + tau * o for t, o in zip(target, online_after, strict=True)]
        for ours, theirs in zip(target_after, expected, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
        target = target_after
    assert not torch.equal(recorder.snapshots[-1][1][0], target0[0])


def test_hard_update_copies_the_online_network_every_interval_plus_one_updates(tmp_path: Path) -> None:
    """torchrl's HardUpdate(value_network_update_interval=k) copies at every (k + 1)-th step (its counter runs
    0..k); between copies the targets stay put."""
    pl.seed_everything(0)
    loss = dqn_loss()
    data = tiny_data(total_frames=64)
    model = TorchRLModule(data.observation_space, data.action_space, loss, loss.value_network, batch_size=8,
                          target_updater=HardUpdate(loss, value_network_update_interval=2))  # fmt: skip
    _, target0 = online_and_target(loss)
    recorder = TargetRecorder()
    quiet_trainer(tmp_path, callbacks=[recorder]).fit(model, datamodule=data)
    assert model.updates == 8
    copies = []
    for update, (online, target) in enumerate(recorder.snapshots, start=1):
        if all(torch.equal(o, t) for o, t in zip(online, target, strict=True)):
            copies.append(update)
        elif update > 3:
            previous_copy = recorder.snapshots[copies[-1] - 1][1]
            assert all(torch.equal(a, b) for a, b in zip(target, previous_copy, strict=True))
        else:
            assert all(torch.equal(a, b) for a, b in zip(target, target0, strict=True))
    assert copies == [3, 6]
    assert model.target_net_updater is not None and model.target_net_updater.counter == 2


def test_a_resumed_run_continues_the_target_updates(tmp_path: Path) -> None:
    """The targets (buffers of the loss module) and HardUpdate's counter come back from the checkpoint: two
    resumes of one checkpoint are the same run, and the counter goes on from where it was saved."""
    pl.seed_everything(0)
    data = tiny_data(total_frames=64)

    def build() -> TorchRLModule:
        loss = dqn_loss()
        updater = HardUpdate(loss, value_network_update_interval=2)
        return TorchRLModule(
            data.observation_space, data.action_space, loss, loss.value_network, batch_size=16, target_updater=updater
        )

    model = build()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(tmp_path, enable_checkpointing=True, callbacks=[checkpoint]).fit(model, datamodule=data)
    assert model.updates == 4 and model.target_net_updater.counter == 1  # type: ignore[union-attr]
    saved_targets = online_and_target(model.loss_module)[1]
    finals = []
    for attempt in range(2):
        pl.seed_everything(attempt + 1)
        resumed = build()
        trainer = quiet_trainer(tmp_path / f"resume{attempt}", callbacks=[recorder := TargetRecorder()])
        trainer.fit(resumed, datamodule=tiny_data(total_frames=128), ckpt_path=checkpoint.last_model_path)
        assert resumed.updates == 8 and resumed.target_net_updater.counter == 2  # type: ignore[union-attr]
        # update 5 is the counter's 2nd step after the save: no copy yet, the saved targets are still there
        assert all(torch.equal(a, b) for a, b in zip(recorder.snapshots[0][1], saved_targets, strict=True))
        online, target = recorder.snapshots[1]  # update 6: the (k + 1)-th step, a copy
        assert all(torch.equal(a, b) for a, b in zip(online, target, strict=True))
        finals.append(resumed.state_dict())
    for key, value in finals[0].items():
        assert torch.equal(finals[1][key], value), key


def test_a_target_updater_must_be_torchrls_over_the_same_loss() -> None:
    data = tiny_data()
    loss = dqn_loss()
    with pytest.raises(TypeError, match=r"TargetNetUpdaterHook.*SoftUpdate\(loss_module, tau=t\)"):
        TorchRLModule(
            data.observation_space,
            data.action_space,
            loss,
            loss.value_network,
            target_updater=TargetNetUpdaterHook(0.01),
        )
    with pytest.raises(ValueError, match=r"built over another loss module .* SoftUpdate\(loss_module, \.\.\.\)"):
        TorchRLModule(
            data.observation_space,
            data.action_space,
            loss,
            loss.value_network,
            target_updater=SoftUpdate(dqn_loss(), tau=0.1),
        )

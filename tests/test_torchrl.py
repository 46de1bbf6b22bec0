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
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import A2CLoss, ClipPPOLoss
from torchrl.objectives.value import GAE

from rl_lightning import RL_HOOKS, RLCallback, RLDataModule, RLModule, keys
from rl_lightning.callbacks import CountFramesLog, LogScalar, RewardNormalizer
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


class MinibatchKeys(RLCallback):
    """Records the keys of every minibatch the loss is given."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    def on_process_optim_batch(self, trainer: pl.Trainer, pl_module: RLModule, batch: TensorDict) -> None:
        self.keys.append(set(batch.keys()))


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

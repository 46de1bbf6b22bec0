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

from rl_lightning import RL_HOOKS, ReplayBuffer, RLCallback, RLDataModule, RLModule, keys
from rl_lightning.callbacks import ReplayBufferTrainer, TargetNetUpdaterHook
from rl_lightning.interop.torchrl_module import TorchRLModule
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
    noise = AdditiveGaussianModule(spec=PENDULUM_SPEC, sigma_init=0.5, sigma_end=0.1, annealing_num_steps=512)
    return loss, SoftUpdate(loss, tau=0.01), TensorDictSequential(actor, noise)


def dqn_parts(hidden: int = 16) -> tuple[DQNLoss, HardUpdate, TensorDictSequential]:
    """A torchrl DQN for CartPole: a QValueActor writing integer actions, ε-greedy around it, DQNLoss."""
    qvalue = QValueActor(
        MLP(in_features=4, out_features=2, num_cells=[hidden]), in_keys=["observation"], spec=CategoricalSpec(2)
    )
    loss = DQNLoss(qvalue, action_space="categorical", delay_value=True)
    greedy = EGreedyModule(spec=CategoricalSpec(2), eps_init=1.0, eps_end=0.1, annealing_num_steps=512)
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
    data = pendulum(total_frames=256) if env == "pendulum" else cartpole(total_frames=256)
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

    assert model.frames == 256 and model.updates == 7 * 32 // 4  # 7 batches after the random one, 8 updates each
    assert_hooks_in_order([c for c in recorder.calls if c in RL_HOOKS])
    assert len(model.replay_buffer) == 256
    after = parameters(model)
    moved = {key for key in before if not torch.equal(before[key], after[key])}
    assert any("target_" in key for key in moved), "the target updater moved no target parameter"
    assert any(key.startswith("actor.") for key in moved)  # the policy shares the loss's trained weights
    assert not torch.equal(deterministic(), greedy_before)
    assert all(torch.isfinite(trainer.callback_metrics[f"train/{k}"]) for k in ("loss",))
    if name != "sac":  # the exploration module was stepped by the 256 frames: halfway through its 512
        exploration = model.exploration[0]
        noise = exploration.eps if name == "dqn" else exploration.sigma
        assert float(noise) == pytest.approx(0.55 if name == "dqn" else 0.3, abs=1e-4)  # 256 float32 steps


def leaves(state: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of a nested state dict, by dotted name."""
    if isinstance(state, dict):
        return {k: v for name, value in state.items() for k, v in leaves(value, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): state}


def assert_same_state(ours: dict[str, Any], theirs: dict[str, Any], rows: int | None = None) -> None:
    """The same leaves; tensors compared on their first ``rows`` (a torchrl storage's filled part: the rest of its
    capacity is uninitialized memory)."""
    ours, theirs = leaves(ours), leaves(theirs)
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        if isinstance(value, torch.Tensor):
            if rows is not None and value.dim() > 0:
                value, theirs[name] = value[:rows], theirs[name][:rows]
            assert torch.equal(value, theirs[name]), name
        else:
            assert value == theirs[name], name


class BufferAtStart(pl.Callback):
    """The replay buffer's state once the fit starts (after a checkpoint restored it)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.state = pl_module.replay_buffer.state_dict()


def torchrl_buffer() -> TensorDictReplayBuffer:
    return TensorDictReplayBuffer(storage=LazyTensorStorage(1000))


@pytest.mark.parametrize("buffer", ["rl_lightning", "torchrl"])
def test_two_resumes_of_one_checkpoint_are_the_same_run_with_the_replay_buffer_restored(
    tmp_path: Path, buffer: str
) -> None:
    """Networks, targets, log_alpha, Adam's state, the replay contents (rl_lightning's buffer or a torchrl one),
    counters and RNG come back from the checkpoint: two resumes with different global seeds end the same."""

    def sac(data: RLDataModule) -> TorchRLOffPolicyModule:
        return build("sac", data, replay_buffer=torchrl_buffer() if buffer == "torchrl" else None)

    pl.seed_everything(0)
    model = sac(pendulum())
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(tmp_path, enable_checkpointing=True, callbacks=[checkpoint]).fit(model, datamodule=pendulum())
    saved = model.replay_buffer.state_dict()
    loss, updater = sac_parts()  # the same modules built again: the weights and targets come from the checkpoint
    loaded = TorchRLOffPolicyModule.load_from_checkpoint(
        checkpoint.last_model_path, loss_module=loss, target_updater=updater
    )
    assert_same_state(loaded.state_dict(), model.state_dict())
    finals = []
    for attempt in range(2):
        pl.seed_everything(attempt + 1)  # the checkpoint's RNG states win
        resumed, at_start = sac(pendulum()), BufferAtStart()
        trainer = quiet_trainer(tmp_path / f"resume{attempt}", callbacks=[at_start])
        trainer.fit(resumed, datamodule=pendulum(total_frames=256), ckpt_path=checkpoint.last_model_path)
        assert_same_state(at_start.state, saved, rows=128 if buffer == "torchrl" else None)
        assert resumed.frames == 256 and resumed.updates == 2 * model.updates + 8  # no random batch this time
        assert len(resumed.replay_buffer) == 256
        finals.append(resumed.state_dict())
    assert_same_state(finals[0], finals[1])


def test_a_torchrl_replay_buffer_is_filled_with_each_batch_and_sampled_from(tmp_path: Path) -> None:
    pl.seed_everything(0)
    data = cartpole()
    storage = torchrl_buffer()
    model = build("dqn", data, replay_buffer=storage)
    recorder = SampleRecorder()
    trainer = quiet_trainer(tmp_path, callbacks=[recorder])
    trainer.fit(model, datamodule=data)
    assert isinstance(model.replay_buffer, TorchRLReplay) and model.replay_buffer.buffer is storage
    assert len(storage) == 128 and storage.write_count == 128
    fillers = [cb for cb in trainer.callbacks if isinstance(cb, ReplayBufferTrainer)]  # type: ignore[attr-defined]
    assert [cb.buffer for cb in fillers] == [model.replay_buffer]
    # the samples are the torchrl buffer's (its "index" entries), of the model's batch size
    assert len(recorder.samples) == model.updates == 24
    assert all(sample.batch_size == torch.Size([16]) and "index" in sample.keys() for sample in recorder.samples)
    stored = storage[:]
    for sample in recorder.samples[:3]:
        torch.testing.assert_close(sample[keys.OBSERVATION], stored[keys.OBSERVATION][sample["index"]])


class SampleRecorder(RLCallback):
    def __init__(self) -> None:
        self.samples: list[TensorDict] = []

    def on_process_optim_batch(self, trainer: pl.Trainer, pl_module: Any, batch: TensorDict) -> None:
        self.samples.append(batch)


def test_bad_arguments_name_the_value_and_the_fix(tmp_path: Path) -> None:
    data = pendulum()
    spaces = data.observation_space, data.action_space
    loss, updater = sac_parts()
    with pytest.raises(TypeError, match="not a torchrl LossModule"):
        TorchRLOffPolicyModule(*spaces, nn.Linear(3, 1), target_updater=updater)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"n_step=3 is not supported .* SACLoss discounts .* Use n_step=1"):
        TorchRLOffPolicyModule(*spaces, loss, target_updater=updater, n_step=3)
    with pytest.raises(ValueError, match=r"target_qvalue_network_params.*Pass target_updater=SoftUpdate\(loss_module"):
        TorchRLOffPolicyModule(*spaces, loss)
    with pytest.raises(ValueError, match="built over another loss module"):
        TorchRLOffPolicyModule(*spaces, loss, target_updater=sac_parts()[1])
    with pytest.raises(TypeError, match="replay_buffer is a ReplayBuffer, not a torchrl ReplayBuffer"):
        TorchRLOffPolicyModule(*spaces, loss, target_updater=updater, replay_buffer=ReplayBuffer(100))  # type: ignore[arg-type]
    sized = TensorDictReplayBuffer(storage=LazyTensorStorage(100), batch_size=64)
    with pytest.raises(ValueError, match=r"samples batch_size=64 .* model's batch_size=16. Pass batch_size=64"):
        TorchRLOffPolicyModule(*spaces, loss, target_updater=updater, replay_buffer=sized, batch_size=16)
    model = TorchRLOffPolicyModule(*spaces, loss, target_updater=updater, batch_size=16, init_random_frames=32)
    trainer = quiet_trainer(tmp_path, callbacks=[TargetNetUpdaterHook(0.005)])
    with pytest.raises(ValueError, match=r"lists TargetNetUpdaterHook.*pass target_updater=SoftUpdate"):
        trainer.fit(model, datamodule=data)


# -- learning ------------------------------------------------------------------------------------------------------


def trained_sac(
    root: Path, threshold: float = -200.0, total_frames: int = 20_000, seed: int = 0
) -> tuple[TorchRLOffPolicyModule, RLDataModule, pl.Trainer]:
    """torchrl's SACLoss on Pendulum-v1, trained until a deterministic evaluation (8 episodes, every 640 frames)
    reaches ``threshold`` or ``total_frames`` run out. Returns the model (its ``actor`` is the trained policy:
    ``model.predict``, ``model.act``), the data and the trainer; also what another test can use as a trained
    behaviour policy.

    configs/sac.yaml's settings (64 x 64 networks, batch 256, 1,000 random frames, tau 0.005) but half the updates
    (``utd_ratio=0.5``) at twice the learning rate: torchrl's loss costs more per update than rl_lightning's SAC, and
    with seeds 0, 1 and 2 this reached -200 after 5,760, 8,960 and 7,680 frames (2,368 to 3,968 updates)."""
    pl.seed_everything(seed)
    data = RLDataModule(
        "Pendulum-v1", num_envs=4, frames_per_batch=64, total_frames=total_frames, seed=seed, eval_episodes=8,
        eval_envs=8,
    )  # fmt: skip
    loss, updater = sac_parts(hidden=64, gamma=0.99, tau=0.005)
    model = TorchRLOffPolicyModule(
        data.observation_space, data.action_space, loss, target_updater=updater, lr=2e-3, batch_size=256,
        buffer_size=100_000, init_random_frames=1000, utd_ratio=0.5,
    )  # fmt: skip
    stop = EarlyStopping("val/episode_return", mode="max", stopping_threshold=threshold, patience=10**6,
                         check_on_train_epoch_end=False)  # fmt: skip
    trainer = quiet_trainer(root, val_check_interval=10, callbacks=[stop])
    trainer.fit(model, datamodule=data)
    return model, data, trainer


@pytest.mark.learning
def test_torchrl_sac_loss_reaches_minus_200_on_pendulum_within_20000_frames(tmp_path: Path) -> None:
    """torchrl's SACLoss, SoftUpdate and a tanh-Gaussian ProbabilisticActor reach -200 in deterministic evaluation
    within 20,000 frames; the run stops at the first evaluation that does."""
    torch.set_num_threads(1)
    model, data, trainer = trained_sac(tmp_path)
    assert trainer.callback_metrics["val/episode_return"] >= -200.0
    assert model.frames < data.total_frames


# -- DDP: both torchrl adapters on 2 CPU ranks (gloo) ------------------------------------------------------------

DDP_FRAMES_PER_BATCH = 32  # per rank
DDP_BATCHES = 4  # per rank
DDP_KINDS = ("on", "off", "data")
"""The fits of one DDP launch: TorchRLModule on rl_lightning's data, TorchRLOffPolicyModule, TorchRLModule on a
torchrl env (TorchRLDataModule)."""


def ddp_fit(directory: Path) -> None:
    """One rank of two 2-rank DDP fits, one after the other in the same process group: TorchRLModule (ClipPPOLoss on
    CartPole), then TorchRLOffPolicyModule (SACLoss on Pendulum); each rank saves its end states to
    ``directory/<on|off>``."""
    from rl_lightning.interop.torchrl_data import TorchRLDataModule
    from tests.probe import SaveRankState
    from tests.test_torchrl import ppo_parts
    from tests.torchrl_workers import cartpole as torchrl_cartpole

    torch.set_num_threads(1)
    frames = {"frames_per_batch": DDP_FRAMES_PER_BATCH, "total_frames": 2 * DDP_BATCHES * DDP_FRAMES_PER_BATCH}
    for kind in DDP_KINDS:
        pl.seed_everything(0)
        model: TorchRLModule | TorchRLOffPolicyModule
        data: RLDataModule
        if kind == "off":
            data = pendulum(**frames)
            model = build("sac", data, init_random_frames=64)
        else:
            if kind == "on":
                data = cartpole(**frames)
            else:  # a torchrl env as the data, each rank with its own
                data = TorchRLDataModule(env=torchrl_cartpole, env_id="CartPole-v1", seed=0, **frames)
            loss, gae = ppo_parts()
            spaces = data.observation_space, data.action_space
            model = TorchRLModule(*spaces, loss, advantage=gae, n_epochs=2, batch_size=32)
        callbacks = [SaveRankState(str(directory / kind)), FirstObservation(str(directory / kind))]
        trainer = quiet_trainer(directory, strategy="ddp", devices=2, limit_val_batches=0, callbacks=callbacks)
        trainer.fit(model, datamodule=data)


class FirstObservation(RLCallback):
    """Rank ``r`` saves the first observation of its first batch to ``dirpath/first{r}.pt``: what its envs' seed
    decided."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.saved = False

    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        if not self.saved:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            torch.save(batch[keys.OBSERVATION][0, 0].cpu().clone(), self.dirpath / f"first{trainer.global_rank}.pt")
            self.saved = True


def run_ddp(directory: Path, timeout: float = 240) -> dict[str, dict[int, dict[str, Any]]]:
    """Runs :func:`ddp_fit` as this module's script (Lightning's launcher starts rank 1 the same way), in a session of
    its own: on a hang every process is killed after ``timeout`` seconds and the test fails."""
    command = [sys.executable, "-m", "tests.test_torchrl_off_policy", "ddp", str(directory)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"the DDP run did not end within {timeout} s; its stderr:\n{stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for kind in DDP_KINDS:
        runs[kind] = {rank: torch.load(directory / kind / f"rank{rank}.pt", weights_only=True) for rank in range(2)}
        for rank in range(2):
            runs[kind][rank]["first_observation"] = torch.load(directory / kind / f"first{rank}.pt")
    return runs


def test_both_adapters_keep_ddp_ranks_identical_and_count_the_frames_of_both(tmp_path: Path) -> None:
    """TorchRLModule (ClipPPOLoss, on rl_lightning's data and on a torchrl env through TorchRLDataModule) and
    TorchRLOffPolicyModule (SACLoss: replay, target updates, log_alpha) on 2 gloo ranks: the same weights, targets and
    Adam state on both after the fit, frames counted over both ranks, each rank with its own envs, seeded apart (and
    its own replay buffer)."""
    runs = run_ddp(tmp_path)
    for kind, (zero, one) in ((kind, (ranks[0], ranks[1])) for kind, ranks in runs.items()):
        assert zero["params"].keys() == one["params"].keys()
        for name, value in zero["params"].items():
            torch.testing.assert_close(value, one["params"][name], rtol=0, atol=0, msg=f"{kind}: {name}")
        for a, b in zip(zero["optimizers"], one["optimizers"], strict=True):
            for index, state in a["state"].items():
                for key, value in state.items():
                    torch.testing.assert_close(value, b["state"][index][key], rtol=0, atol=0)
        for rank in (zero, one):
            assert rank["frames"] == 2 * DDP_BATCHES * DDP_FRAMES_PER_BATCH and rank["batches"] == DDP_BATCHES
        assert zero["updates"] == one["updates"] > 0
        assert zero["env_seed"] != one["env_seed"]
        assert not torch.equal(zero["first_observation"], one["first_observation"]), kind  # the seeds took effect
    zero, one = runs["off"][0], runs["off"][1]
    assert any("target_qvalue" in name for name in zero["params"])
    # each rank stored its own transitions: different data, the same weights
    zero_obs, one_obs = zero["buffer"]["data"]["observation"], one["buffer"]["data"]["observation"]
    assert zero_obs.shape == one_obs.shape == (DDP_BATCHES * DDP_FRAMES_PER_BATCH, 3)
    assert not torch.equal(zero_obs, one_obs)


if __name__ == "__main__" and sys.argv[1:2] == ["ddp"]:
    ddp_fit(Path(sys.argv[2]))

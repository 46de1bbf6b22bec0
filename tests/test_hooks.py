"""torchrl's hook classes as callbacks, each checked for its effect in a real fit (tiny PPO on CartPole, tiny SAC
on Pendulum), plus bad input, YAML and checkpoint state."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from tensordict import TensorDict

from rl_lightning import SAC, RLDataModule, keys
from rl_lightning.callbacks import (
    BatchSubSampler,
    ClearCudaCache,
    CountFramesLog,
    FrameEarlyStopping,
    LogScalar,
    LogTiming,
    LRSchedulerHook,
    OptimizerHook,
    RewardNormalizer,
    RLCallback,
    SelectKeys,
)
from rl_lightning.cli import cli
from tests.conftest import ROOT, quiet_trainer, tiny_ppo_run
from tests.test_rl_loop import EpisodeLog, window_means


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def halve_every_batch(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def module_optimizer(model: pl.LightningModule) -> torch.optim.Optimizer:
    """The torch optimizer of a module with a single optimizer."""
    optimizer = model.optimizers()
    assert not isinstance(optimizer, list)
    return optimizer.optimizer


def callbacks_of(trainer: pl.Trainer) -> list[pl.Callback]:
    return trainer.callbacks  # type: ignore[attr-defined]  # set dynamically by Lightning


def csv_rows(trainer: pl.Trainer, column: str) -> list[float]:
    """The values the CSV logger wrote for ``column``, in order."""
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return [float(r[column]) for r in csv.DictReader(f) if r.get(column)]


def logged_run(tmp_path: Path, **kwargs: Any) -> tuple[pl.Trainer, Any, RLDataModule]:
    """tiny_ppo_run with a CSV logger writing every batch."""
    return tiny_ppo_run(tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=1, **kwargs)


class MinibatchRecorder(RLCallback):
    """Records the minibatch of each inner step as the loss saw it (``on_post_loss`` runs after every
    ``on_process_optim_batch``)."""

    def __init__(self, record: Callable[[TensorDict], Any] = lambda sub: sub.clone()) -> None:
        self.record = record
        self.minibatches: list[Any] = []

    def on_post_loss(self, trainer: Any, module: Any, batch: TensorDict, losses: TensorDict) -> None:
        self.minibatches.append(self.record(batch))


# -- BatchSubSampler ---------------------------------------------------------------------------------------


class MarkSteps(RLCallback):
    """Writes each step's env and time index, and a mask: env 0's first 6 steps and env 1's last 3 are invalid."""

    def on_batch_process(self, trainer: Any, module: Any, batch: TensorDict) -> None:
        envs, steps = batch.batch_size
        batch.set("env", torch.arange(envs).unsqueeze(1).expand(envs, steps).clone())
        batch.set("t", torch.arange(steps).expand(envs, steps).clone())
        mask = torch.ones(envs, steps, dtype=torch.bool)
        mask[0, :6] = False
        mask[1, -3:] = False
        batch.set("mask", mask)


def test_batch_sub_sampler_draws_valid_sub_trajectories_from_the_whole_batch(tmp_path: Path) -> None:
    recorder = MinibatchRecorder(lambda sub: sub.select("env", "t", "mask").reshape(4, 8))
    trainer, model, data = tiny_ppo_run(
        tmp_path, callbacks=[MarkSteps(), BatchSubSampler(batch_size=32, sub_traj_len=8), recorder]
    )
    trainer.fit(model, datamodule=data)
    assert model.updates == 4 * 2 * 2 and len(recorder.minibatches) == model.updates  # PPO's losses ran on them
    starts: set[tuple[int, int]] = set()
    for sub in recorder.minibatches:  # 32 transitions (flat, for PPO), 4 sub-trajectories of 8 steps end to end
        assert sub["mask"].all()  # never an invalid step
        assert (sub["t"].diff(dim=1) == 1).all() and (sub["env"] == sub["env"][:, :1]).all()  # contiguous, one env
        starts.update(zip(sub["env"][:, 0].tolist(), sub["t"][:, 0].tolist(), strict=True))
    # drawn from every env of the whole batch (not PPO's flat minibatch), at many offsets
    assert {env for env, _ in starts} == {0, 1, 2, 3} and len(starts) > 12
    assert all(t >= 6 for env, t in starts if env == 0) and all(t + 8 <= 13 for env, t in starts if env == 1)


def test_batch_sub_sampler_shrinks_to_the_shortest_valid_run_but_not_below_the_minimum() -> None:
    batch = TensorDict({"t": torch.arange(10).expand(3, 10).clone()}, batch_size=[3, 10])
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 5:] = False  # env 0: 5 valid steps
    batch.set("mask", mask)
    sampled = BatchSubSampler(batch_size=12, sub_traj_len=6, flatten=False).sample(batch)
    assert sampled.batch_size == torch.Size([2, 5])
    assert BatchSubSampler(batch_size=12, sub_traj_len=6).sample(batch).batch_size == torch.Size([10])
    # with a minimum of 6, env 0 is left out instead
    sub = BatchSubSampler(batch_size=12, sub_traj_len=6, min_sub_traj_len=6, flatten=False).sample(batch)
    assert sub.batch_size == torch.Size([2, 6]) and sub["mask"].all()
    mask[:] = False
    with pytest.raises(ValueError, match="leaves no 1 consecutive valid steps"):
        BatchSubSampler(batch_size=12, sub_traj_len=6).sample(batch.set("mask", mask))


def test_batch_sub_sampler_that_does_not_fit_the_batch_stops_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"batch_size=30 is not a multiple of sub_traj_len=8"):
        BatchSubSampler(batch_size=30, sub_traj_len=8)
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[BatchSubSampler(batch_size=32, sub_traj_len=32)])
    with pytest.raises(ValueError, match=r"sub_traj_len=32 is longer than the 16 steps per env"):
        trainer.fit(model, datamodule=data)
    assert model.updates == 0
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[BatchSubSampler(batch_size=24)])
    with pytest.raises(ValueError, match=r"batch_size=24 is not a multiple of the 16 steps of a whole trajectory"):
        trainer.fit(model, datamodule=data)


# -- ClearCudaCache ----------------------------------------------------------------------------------------


def test_clear_cuda_cache_runs_every_interval_updates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one mock of this file: there is no GPU here, so torch.cuda.empty_cache is replaced by a counter.
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[ClearCudaCache(interval=5)])
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(model.updates))
    trainer.fit(model, datamodule=data)
    assert model.updates == 16
    # after updates 5, 10 and 15; Lightning itself calls it once as the fit starts (at 0 updates)
    assert calls == [0, 5, 10, 15]


def test_clear_cuda_cache_is_a_no_op_without_cuda(tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, data={"total_frames": 64}, callbacks=[ClearCudaCache(interval=1)])
    trainer.fit(model, datamodule=data)
    assert model.updates == 4
    with pytest.raises(ValueError, match="interval=0 is invalid"):
        ClearCudaCache(0)


# -- CountFramesLog, LogScalar, LogTiming ------------------------------------------------------------------


def test_count_frames_log_writes_n_frames(tmp_path: Path) -> None:
    trainer, model, data = logged_run(tmp_path, callbacks=[CountFramesLog()])
    trainer.fit(model, datamodule=data)
    assert csv_rows(trainer, "n_frames") == [64.0, 128.0, 192.0, 256.0]


def test_log_scalar_logs_reductions_of_batch_entries(tmp_path: Path) -> None:
    callbacks = [
        LogScalar("next.reward", reduction="sum"),  # CartPole pays 1 per step: 64 per batch, std 0
        LogScalar(["next", "reward"], logname="rollout/min_reward", reduction="min", include_std=False),
        LogScalar("advantage", logname="train/advantage_max", reduction="max"),  # written by PPO's prepare_batch
    ]
    trainer, model, data = logged_run(tmp_path, callbacks=callbacks)
    trainer.fit(model, datamodule=data)
    assert csv_rows(trainer, "rollout/next.reward") == [64.0] * 4
    assert csv_rows(trainer, "rollout/next.reward/std") == [0.0] * 4
    assert csv_rows(trainer, "rollout/min_reward") == [1.0] * 4
    assert len(csv_rows(trainer, "train/advantage_max")) == 4
    assert not csv_rows(trainer, "rollout/min_reward/std")


def test_log_scalar_with_a_missing_key_stops_before_any_update(tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[LogScalar("next.rewards")])
    with pytest.raises(ValueError, match=r"key='next.rewards'.*no such entry.*Available keys: .*next\.reward,") as err:
        trainer.fit(model, datamodule=data)
    assert "action_log_prob" in str(err.value)
    assert model.updates == 0 and trainer.global_step == 0
    with pytest.raises(ValueError, match="reduction='median' is invalid"):
        LogScalar("next.reward", reduction="median")  # type: ignore[arg-type]


def test_log_timing_splits_each_batch_into_collection_and_optimization(tmp_path: Path) -> None:
    trainer, model, data = logged_run(tmp_path, callbacks=[LogTiming()])
    trainer.fit(model, datamodule=data)
    collect, optim, whole = (csv_rows(trainer, f"time/{k}") for k in ("collect", "optim", "batch"))
    assert len(collect) == len(optim) == len(whole) == 4
    assert all(c > 0 and o > 0 for c, o in zip(collect, optim, strict=True))
    assert whole == pytest.approx([c + o for c, o in zip(collect, optim, strict=True)])


# -- OptimizerHook -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "direct"), [("32-true", True), ("bf16-mixed", False)])
def test_optimizer_hook_trains_the_critic_with_its_own_optimizer(tmp_path: Path, precision: str, direct: bool) -> None:
    hook = OptimizerHook(sgd, parameters="critic", loss_components=["loss_critic"])
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[hook], precision=precision)
    critic = list(model.critic.parameters())
    actor = list(model.actor_body.parameters())
    critic_before = [p.detach().clone() for p in critic]
    actor_before = [p.detach().clone() for p in actor]
    trainer.fit(model, datamodule=data)
    assert model._direct_torch is direct  # the fast path, and Lightning's manual backward and precision step
    assert model.updates == 16
    # the critic moved, through the hook's SGD (momentum buffers) and never through the module's Adam
    assert all(not torch.equal(a, b) for a, b in zip(critic, critic_before, strict=True))
    assert hook.optimizer is not None
    assert all("momentum_buffer" in hook.optimizer.state[p] for p in critic)
    adam = module_optimizer(model)
    assert all(p not in adam.state or not adam.state[p] for p in critic)
    # the actor still trains with the module's Adam on the remaining terms
    assert all(not torch.equal(a, b) for a, b in zip(actor, actor_before, strict=True))
    assert all(adam.state[p]["step"] == 16 for p in actor)


def test_optimizer_hook_takes_all_loss_terms_and_the_module_step_is_skipped(tmp_path: Path) -> None:
    hook = OptimizerHook(sgd)  # all parameters, all loss_* terms
    trainer, model, data = tiny_ppo_run(tmp_path, data={"total_frames": 64}, callbacks=[hook])
    trainer.fit(model, datamodule=data)
    assert model.updates == 4 and trainer.global_step == 0  # the module's optimizer never stepped
    assert not module_optimizer(model).state
    assert hook.optimizer is not None and len(hook.optimizer.state) == len(list(model.parameters()))


def test_optimizer_hook_bad_names(tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[OptimizerHook(sgd, "critic", ["loss_value"])])
    with pytest.raises(
        ValueError, match=r"loss_value not among the loss terms of the module, which are: loss_objective, loss_critic"
    ):
        trainer.fit(model, datamodule=data)
    assert model.updates == 0 and trainer.global_step == 0
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[OptimizerHook(sgd, "critics")])
    with pytest.raises(ValueError, match=r"parameters='critics'.*no such sub-module.*Its sub-modules: .*critic"):
        trainer.fit(model, datamodule=data)
    with pytest.raises(ValueError, match=r"loss_components=\[\] is invalid"):
        OptimizerHook(sgd, loss_components=[])


@pytest.mark.parametrize(("parameters", "component"), [("critics", "loss_qvalue"), ("log_alpha", "loss_alpha")])
def test_optimizer_hook_in_sac(tmp_path: Path, parameters: str, component: str) -> None:
    """SAC's critics (whose detached weights the actor's loss still reads) or its temperature, a single
    parameter, with their own Adam; the module's Adam trains the rest."""
    hook = OptimizerHook(lambda p: torch.optim.Adam(p, lr=1e-3), parameters=parameters, loss_components=[component])
    _, model = tiny_sac_run(tmp_path, callbacks=[hook])
    assert model.updates == 192
    trained = [model.log_alpha] if parameters == "log_alpha" else list(model.critics.parameters())
    assert hook.optimizer is not None
    assert all(hook.optimizer.state[p]["step"] == 192 for p in trained)
    adam = module_optimizer(model)
    assert all(not adam.state.get(p) for p in trained)
    assert all(adam.state[p]["step"] == 192 for p in model.actor_body.parameters())


# -- RewardNormalizer --------------------------------------------------------------------------------------


def tiny_sac_run(tmp_path: Path, callbacks: list[Any], **model: Any) -> tuple[pl.Trainer, SAC]:
    pl.seed_everything(0)
    data = RLDataModule("Pendulum-v1", num_envs=2, frames_per_batch=32, total_frames=256, eval_episodes=2)
    module = SAC(
        data.observation_space,
        data.action_space,
        **{"hidden_sizes": [16], "batch_size": 32, "buffer_size": 1000, "init_random_frames": 64, **model},
    )
    trainer = quiet_trainer(tmp_path, log_every_n_steps=1, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return trainer, module


class CollectedRewards(RLCallback):
    """Records each collected batch's rewards and episode starts, as this rank collected them (put it first)."""

    def __init__(self) -> None:
        self.rewards: list[torch.Tensor] = []
        self.starts: list[torch.Tensor] = []

    def on_batch_process(self, trainer: Any, module: Any, batch: TensorDict) -> None:
        self.rewards.append(batch[keys.NEXT_REWARD].clone())
        self.starts.append(batch[keys.IS_INIT].clone())


def discounted_returns(collected: CollectedRewards, gamma: float) -> torch.Tensor:
    """Each env's discounted return after every collected step, restarted at each episode's first step."""
    rewards = torch.cat(collected.rewards, 1).squeeze(-1).to(torch.float64)
    starts = torch.cat(collected.starts, 1).squeeze(-1)
    returns = torch.zeros_like(rewards)
    for env in range(rewards.shape[0]):
        running = 0.0
        for t in range(rewards.shape[1]):
            running = rewards[env, t].item() + (0.0 if starts[env, t] else gamma * running)
            returns[env, t] = running
    return returns.flatten()


def test_reward_normalizer_scales_by_the_deviation_of_the_discounted_return() -> None:
    """Hand-computed returns with gamma = 0.5 over two batches; the running return carries across them, and restarts
    at each episode's first step."""
    norm = RewardNormalizer(gamma=0.5, epsilon=1e-8)
    reward = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 8.0]])
    norm.update(reward.unsqueeze(-1), torch.tensor([[True, False, True], [True, False, False]]).unsqueeze(-1))
    norm.update(torch.tensor([[2.0], [2.0]]).unsqueeze(-1), torch.tensor([[False], [True]]).unsqueeze(-1))
    # env 0: 1, 2 + 0.5 * 1, 4 (a new episode) | 2 + 0.5 * 4 (it goes on); env 1: 0, 0, 8 | 2 (a new episode)
    returns = torch.tensor([1.0, 2.5, 4.0, 0.0, 0.0, 8.0, 4.0, 2.0], dtype=torch.float64)
    assert norm.count.item() == 8
    torch.testing.assert_close(norm.mean, returns.mean())
    torch.testing.assert_close(norm.var, returns.var(correction=0))
    batch = TensorDict({keys.NEXT: {keys.REWARD: torch.tensor([[1.0], [-3.0]])}}, batch_size=[2])
    scaled = norm.normalize(batch)[keys.NEXT_REWARD]
    deviation = (returns.var(correction=0) + 1e-8).sqrt().float()
    torch.testing.assert_close(scaled, torch.tensor([[1.0], [-3.0]]) / deviation)
    assert batch[keys.NEXT_REWARD].tolist() == [[1.0], [-3.0]]  # a copy: the batch keeps its rewards
    clipped = RewardNormalizer(gamma=0.5, clip=0.5)
    assert clipped.normalize(batch)[keys.NEXT_REWARD].tolist() == [[0.5], [-0.5]]  # var 1 before any update


class PPOBatches(RLCallback):
    """Records the first prepared batch of a PPO fit: rewards as the algorithm saw them, advantages, value targets."""

    def __init__(self) -> None:
        self.batch: TensorDict | None = None

    def on_pre_optim_steps(self, trainer: Any, module: Any) -> None:
        if self.batch is None:
            self.batch = module.loop.batch.clone()


def test_reward_normalizer_scales_cartpole_rewards_for_ppo_before_its_advantages(tmp_path: Path) -> None:
    """CartPole pays 1 a step: scaled, not zeroed, and PPO's advantages are computed from the scaled rewards."""
    plain, norm, collected = PPOBatches(), RewardNormalizer(), CollectedRewards()
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[plain])
    trainer.fit(model, datamodule=data)
    scaled = PPOBatches()
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[collected, norm, scaled])
    trainer.fit(model, datamodule=data)
    assert plain.batch is not None and scaled.batch is not None
    assert norm._discount == model.gamma == 0.99  # taken from the model
    returns = discounted_returns(collected, 0.99)
    assert norm.count.item() == returns.numel() == 256
    torch.testing.assert_close(norm.var, returns.var(correction=0))
    # The first batch was scaled with the statistics of its own returns, all of them positive.
    factor = (returns.view(4, -1)[:, :16].var(correction=0) + 1e-8).rsqrt().item()
    rewards = scaled.batch[keys.NEXT_REWARD]
    assert plain.batch[keys.NEXT_REWARD].eq(1.0).all()
    torch.testing.assert_close(rewards, torch.full_like(rewards, factor))
    assert 0.0 < factor < 1.0
    # Same seed, same first rollout and value network: only the rewards differ, and so do the advantages.
    assert torch.equal(scaled.batch[keys.OBSERVATION], plain.batch[keys.OBSERVATION])
    assert not torch.allclose(scaled.batch[keys.ADVANTAGE], plain.batch[keys.ADVANTAGE])
    assert collected.rewards[0].eq(1.0).all()  # the collected batch itself keeps the env's rewards


def test_reward_normalizer_scales_sac_replay_samples(tmp_path: Path) -> None:
    norm = RewardNormalizer()
    collected = CollectedRewards()
    recorder = MinibatchRecorder(lambda sub: (sub[keys.NEXT_REWARD].clone(), norm.scale.item()))
    _, model = tiny_sac_run(tmp_path, callbacks=[collected, norm, recorder])
    returns = discounted_returns(collected, model.gamma)
    assert norm.count.item() == returns.numel() == 256
    torch.testing.assert_close(norm.mean, returns.mean())
    torch.testing.assert_close(norm.var, returns.var(correction=0))
    assert model.replay_buffer.sample(256)[keys.NEXT_REWARD].max() <= 0.0  # the buffer keeps Pendulum's raw rewards
    # every reward the loss saw is a collected raw reward times the scale of the time: never shifted
    rewards = torch.cat([r.flatten() for r in collected.rewards]).to(torch.float64)
    assert len(recorder.minibatches) == model.updates > 0
    for reward, scale in recorder.minibatches:
        raw = reward.flatten().to(torch.float64) / scale
        assert (raw.unsqueeze(-1) - rewards).abs().min(-1).values.max() < 1e-3
        assert reward.max() <= 0.0  # Pendulum's rewards are <= 0, and stay so


def test_reward_normalizer_bad_values() -> None:
    for kwargs, message in (({"gamma": 1.5}, "gamma=1.5 is invalid"), ({"epsilon": 0.0}, "epsilon=0.0 is invalid"),
                            ({"clip": -1.0}, "clip=-1.0 is invalid")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            RewardNormalizer(**kwargs)
    with pytest.raises(ValueError, match=r"gamma=None\) takes the model's discount .* pass gamma"):
        RewardNormalizer().update(torch.ones(1, 2, 1), torch.ones(1, 2, 1, dtype=torch.bool))


# -- SelectKeys --------------------------------------------------------------------------------------------

PPO_KEYS = ["observation", "action", "action_log_prob", "next.observation", "next.reward", "next.terminated",
            "next.done"]  # fmt: skip


class SeenKeys(RLCallback):
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def on_pre_steps_log(self, trainer: Any, module: Any, batch: TensorDict) -> None:
        self.keys = {".".join(k) if isinstance(k, tuple) else k for k in batch.keys(True, True)}


def test_select_keys_keeps_only_the_selected_entries(tmp_path: Path) -> None:
    seen = SeenKeys()
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[SelectKeys(PPO_KEYS), seen])
    trainer.fit(model, datamodule=data)
    assert model.updates == 16
    # the selection, plus what PPO's prepare_batch wrote; truncated, episode statistics etc. are gone
    assert seen.keys == {*PPO_KEYS, "state_value", "advantage", "value_target"}


def test_select_keys_errors(tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[SelectKeys(["observation", "action", "next"])])
    with pytest.raises(ValueError, match=r"drops action_log_prob, which PPO needs to train. Add them to keys"):
        trainer.fit(model, datamodule=data)
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[SelectKeys([*PPO_KEYS, "next.info"])])
    with pytest.raises(ValueError, match=r"SelectKeys: next.info not in the batch. Available keys: .*next.truncated"):
        trainer.fit(model, datamodule=data)
    assert model.updates == 0
    with pytest.raises(ValueError, match="keys='observation' is invalid"):
        SelectKeys("observation")


def test_select_keys_knows_what_sac_stores(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"drops next.truncated, which SAC needs"):
        tiny_sac_run(tmp_path, callbacks=[SelectKeys(["observation", "action", "is_init", "next.observation",
                                                      "next.reward", "next.terminated", "next.done"])])  # fmt: skip
    # is_init tells the replay buffer where the envs restarted, so that n-step windows never join two episodes
    with pytest.raises(ValueError, match=r"drops is_init, which SAC needs"):
        tiny_sac_run(tmp_path, callbacks=[SelectKeys(["observation", "action", "next"])])


# -- FrameEarlyStopping ------------------------------------------------------------------------------------


def test_frame_early_stopping_counts_patience_in_frames(tmp_path: Path) -> None:
    # min_delta=1e6: no evaluation after the first counts as an improvement
    stopper = FrameEarlyStopping("val/episode_return", patience_frames=128, mode="max", min_delta=1e6)
    trainer, model, data = tiny_ppo_run(
        tmp_path, data={"total_frames": 1024}, callbacks=[stopper], val_check_interval=1
    )
    trainer.fit(model, datamodule=data)
    # checks after every 64-frame batch: best at 64, no improvement at 128 and 192 = 64 + 128 frames: stop
    assert model.frames == 192 and trainer.should_stop
    assert trainer.early_stopping_callback is stopper
    assert stopper.best_frames == 64 and stopper.wait_count == 2
    assert "did not improve in the last 128 frames" in (stopper.stopping_reason_message or "")
    with pytest.raises(ValueError, match="patience_frames=-1 is invalid"):
        FrameEarlyStopping("val/episode_return", patience_frames=-1)


def test_frame_early_stopping_keeps_the_thresholds(tmp_path: Path) -> None:
    stopper = FrameEarlyStopping("val/episode_return", patience_frames=10**9, mode="max", stopping_threshold=1.0)
    trainer, model, data = tiny_ppo_run(
        tmp_path, data={"total_frames": 1024}, callbacks=[stopper], val_check_interval=1
    )
    trainer.fit(model, datamodule=data)
    assert model.frames == 64  # every CartPole episode returns at least 1: the threshold stops at the first check
    assert "Stopping threshold reached" in (stopper.stopping_reason_message or "")


# -- LRSchedulerHook ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "step_size", "per_batch"), [("batch", 1, 0.5), ("update", 2, 0.25)])
def test_lr_scheduler_hook_follows_the_schedule(
    tmp_path: Path, interval: Literal["batch", "update"], step_size: int, per_batch: float
) -> None:
    hook = LRSchedulerHook(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size, gamma=0.5), interval)
    trainer, model, data = logged_run(
        tmp_path,
        model={"lr": 1e-3, "anneal_lr": False},
        callbacks=[hook, LearningRateMonitor(logging_interval="step")],
    )
    trainer.fit(model, datamodule=data)
    # 4 updates per batch; LearningRateMonitor logs the optimizer's lr as each batch starts, PPO logs train/lr
    # after the batch's updates
    assert csv_rows(trainer, "lr-Adam") == pytest.approx([1e-3 * per_batch**k for k in range(4)])
    assert csv_rows(trainer, "train/lr") == pytest.approx([1e-3 * per_batch**k for k in range(1, 5)])
    assert module_optimizer(model).param_groups[0]["lr"] == pytest.approx(1e-3 * per_batch**4)


def test_lr_scheduler_hook_refuses_ppo_lr_annealing(tmp_path: Path) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[LRSchedulerHook(halve_every_batch, "batch")])
    with pytest.raises(ValueError, match=r"PPO anneals its own learning rate \(anneal_lr=True\).*anneal_lr=false"):
        trainer.fit(model, datamodule=data)
    assert model.updates == 0


# -- YAML and checkpoints ----------------------------------------------------------------------------------


def test_hooks_from_yaml(tmp_path: Path) -> None:
    extra = tmp_path / "hooks.yaml"
    extra.write_text(
        """
model:
  init_args: {anneal_lr: false, lr: 0.001, batch_size: 64, n_epochs: 1}
trainer:
  log_every_n_steps: 1
  callbacks+:
    - class_path: rl_lightning.callbacks.CountFramesLog
    - class_path: rl_lightning.callbacks.LRSchedulerHook
      init_args:
        scheduler: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 1, gamma: 0.5}}
        interval: batch
    - class_path: rl_lightning.callbacks.OptimizerHook
      init_args:
        optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1, momentum: 0.9}}
        parameters: critic
        loss_components: [loss_critic]
    - class_path: rl_lightning.callbacks.LogScalar
      init_args: {key: next.reward, reduction: sum, include_std: false}
"""
    )
    run = cli(
        [
            "fit",
            f"--config={ROOT / 'configs/ppo.yaml'}",
            f"--config={extra}",
            "--data.num_envs=2",
            "--data.frames_per_batch=64",
            "--data.total_frames=192",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.val_check_interval=1",
        ]
    )
    hook = next(cb for cb in callbacks_of(run.trainer) if isinstance(cb, OptimizerHook))
    assert isinstance(hook.optimizer, torch.optim.SGD) and hook.optimizer.defaults["momentum"] == 0.9
    assert hook.optimizer.state  # stepped the critic
    assert csv_rows(run.trainer, "n_frames") == [64.0, 128.0, 192.0]
    assert csv_rows(run.trainer, "rollout/next.reward") == [64.0] * 3
    assert csv_rows(run.trainer, "train/lr") == pytest.approx([5e-4, 2.5e-4, 1.25e-4])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return bool(a == b)


def _hooks() -> list[pl.Callback]:
    return [
        BatchSubSampler(batch_size=32, sub_traj_len=8),
        ClearCudaCache(interval=3),
        CountFramesLog(),
        LogScalar("next.reward"),
        LogTiming(),
        OptimizerHook(sgd, "critic", ["loss_critic"]),
        RewardNormalizer(),
        SelectKeys(PPO_KEYS),
        FrameEarlyStopping("val/episode_return", patience_frames=10**6, mode="max"),
        LRSchedulerHook(halve_every_batch, "batch"),
    ]


def test_state_round_trips_through_a_checkpoint_and_a_resume(tmp_path: Path) -> None:
    hooks = _hooks()
    trainer, model, data = tiny_ppo_run(tmp_path, model={"lr": 1e-3, "anneal_lr": False}, callbacks=hooks)
    trainer.fit(model, datamodule=data)
    path = tmp_path / "hooks.ckpt"
    trainer.save_checkpoint(path)
    saved = trainer.strategy.checkpoint_io.load_checkpoint(path)["callbacks"]

    fresh = _hooks()
    for before, after in zip(hooks, fresh, strict=True):
        state = before.state_dict()
        assert before.state_key in saved, before.state_key
        after.load_state_dict(saved[before.state_key])
        assert _same(after.state_dict(), state), type(before).__name__
    assert hooks[1].state_dict() == {"updates": 16} and hooks[2].state_dict() == {"frames": 256}
    assert hooks[0].state_dict() == {"samples": 16}

    # the restored states carry on in a resumed fit: the schedule continues, SGD keeps its momentum
    trainer, model, data = tiny_ppo_run(
        tmp_path, data={"total_frames": 384}, model={"lr": 1e-3, "anneal_lr": False}, callbacks=_hooks()
    )
    trainer.fit(model, datamodule=data, ckpt_path=path)
    resumed = {type(cb): cb for cb in callbacks_of(trainer)}
    assert module_optimizer(model).param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**6)
    assert resumed[ClearCudaCache].state_dict() == {"updates": 24}
    assert resumed[BatchSubSampler].state_dict() == {"samples": 24}
    normalizer = resumed[RewardNormalizer]
    assert isinstance(normalizer, RewardNormalizer)
    assert normalizer.count.item() == 6 * 64  # the returns of six CartPole batches: four before the resume, two after


# -- DDP ---------------------------------------------------------------------------------------------------


class SaveRewardStats(CollectedRewards):
    """For the DDP test: records this rank's own collected rewards, and at the end of the fit saves them with the
    normalizer's statistics to ``dirpath/rank{r}.pt``."""

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        norm = next(cb for cb in callbacks_of(trainer) if isinstance(cb, RewardNormalizer))
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {"returns": discounted_returns(self, pl_module.gamma), **norm.state_dict()}
        torch.save(state, self.dirpath / f"rank{trainer.global_rank}.pt")


def assert_reward_statistics_of_both_ranks(probe: Path) -> None:
    """What ``SaveRewardStats`` saved in a 2-rank fit: each rank collected its own rewards, and both hold the same
    normalizer statistics, those of both ranks' returns (``tests/test_ddp.py`` runs it)."""
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert not torch.equal(ranks[0]["returns"], ranks[1]["returns"])
    for name in ("count", "mean", "var"):
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
    both = torch.cat([ranks[0]["returns"], ranks[1]["returns"]])
    assert ranks[0]["count"].item() == both.numel() > 0
    torch.testing.assert_close(ranks[0]["mean"], both.mean())
    torch.testing.assert_close(ranks[0]["var"], both.var(correction=0))


class SaveEpisodes(EpisodeLog):
    """For a DDP test: records this rank's completed training episodes and, at the end of the fit, saves them with
    the module's window statistics (computed over all ranks) to ``dirpath/episodes{r}.pt``."""

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        computed = pl_module.episode_stats.compute()  # every rank: it gathers the ranks' windows
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {"episodes": self.episodes, "computed": computed, "frames": pl_module.frames}
        torch.save(state, self.dirpath / f"episodes{trainer.global_rank}.pt")


@pytest.mark.slow
def test_optimizer_hook_under_ddp_keeps_the_ranks_identical(tmp_path: Path) -> None:
    """Also checks, in the same run, that the episode curves average the last stats_window episodes of both ranks."""
    import json

    from tests.test_cli import _quick, _run

    probe = tmp_path / "ranks"
    args = [a for a in _quick(ROOT / "configs/ppo.yaml", tmp_path) if not a.startswith("--data.total_frames")]
    hook = {
        "class_path": "rl_lightning.callbacks.OptimizerHook",
        "init_args": {
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
            "parameters": "critic",
            "loss_components": ["loss_critic"],
        },
    }
    result = _run(
        "fit",
        *args,
        "--data.total_frames=1024",  # 2 batches of 256 frames on each of 2 ranks
        "--trainer.strategy=ddp_find_unused_parameters_true",  # two backward passes per update
        "--trainer.devices=2",
        f"--trainer.callbacks+={json.dumps(hook)}",
        f"--trainer.callbacks+={json.dumps({'class_path': 'tests.probe.SaveRankState', 'init_args': {'dirpath': str(probe)}})}",  # noqa: E501
        f"--trainer.callbacks+={json.dumps({'class_path': 'tests.test_hooks.SaveEpisodes', 'init_args': {'dirpath': str(probe)}})}",  # noqa: E501
        "--data.stats_window=20",
        f"--trainer.callbacks+={json.dumps({'class_path': 'rl_lightning.callbacks.LogScalar', 'init_args': {'reduction': 'sum'}})}",  # noqa: E501
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["updates"] > 0
    for name, value in ranks[0]["params"].items():  # gradients of both backward passes were all-reduced
        torch.testing.assert_close(value, ranks[1]["params"][name], rtol=0, atol=0, msg=name)
    actor = [n for n in ranks[0]["params"] if n.startswith(("actor_body.", "head."))]
    assert len(ranks[0]["optimizers"][0]["state"]) == len(actor)  # the module's Adam never stepped the critic
    logs = [torch.load(probe / f"episodes{r}.pt", weights_only=True) for r in (0, 1)]
    both = logs[0]["episodes"] + logs[1]["episodes"]
    assert len(both) > 20 and logs[0]["episodes"] != logs[1]["episodes"]
    mean_return, mean_length = window_means(both, logs[0]["frames"], 20)
    for log in logs:  # the same on both ranks: the last 20 episodes of the two ranks together
        torch.testing.assert_close(log["computed"].tolist(), [mean_return, mean_length, 20.0])
    (metrics,) = tmp_path.rglob("metrics.csv")
    with open(metrics) as f:
        (row,) = [r for r in csv.DictReader(f) if r["rollout/next.reward"]]
    # LogScalar sums the rewards of both ranks' batches (CartPole pays 1 a step), not only rank zero's
    assert float(row["rollout/next.reward"]) == 2 * 256 and float(row["rollout/next.reward/std"]) == 0.0

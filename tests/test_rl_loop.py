"""The RL loop inside Lightning's fit loop: hook order, hook contracts, counters, fresh rollouts."""

from __future__ import annotations

import csv
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from tensordict import TensorDict

from rl_lightning import PPO, RL_HOOKS, FunctionHook, RLCallback, keys
from rl_lightning.collector import Collector
from rl_lightning.data import _Rollouts
from rl_lightning.envs import make_vec_env
from tests.conftest import tiny_ppo_run


class Recorder(RLCallback):
    """Records every RL hook call (and Lightning's batch hooks around them)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append("on_train_batch_start")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append("on_train_batch_end")


def _record(name: str):  # type: ignore[no-untyped-def]
    def hook(self: Recorder, trainer: Any, module: Any, *args: Any) -> None:
        self.calls.append(name)

    return hook


for _name in RL_HOOKS:
    setattr(Recorder, _name, _record(_name))


def test_hooks_run_in_order_over_two_batches(tmp_path: Any) -> None:
    recorder = Recorder()
    trainer, model, data = tiny_ppo_run(tmp_path, data={"total_frames": 128}, callbacks=[recorder])
    trainer.fit(model, datamodule=data)

    step = ["on_process_optim_batch", "on_process_loss", "on_post_loss", "on_optimizer", "on_post_optim",
            "on_post_optim_log"]  # fmt: skip
    epoch = ["on_pre_epoch", "on_pre_epoch_log", *step * 2, "on_post_epoch", "on_post_epoch_log"]  # 64 / 32 per step
    one_batch = [
        "on_train_batch_start",
        "on_batch_process",
        "on_pre_steps_log",
        "on_pre_optim_steps",
        *epoch * 2,
        "on_post_steps",
        "on_post_optim_complete_log",
        "on_post_steps_log",
        "on_train_batch_end",
    ]
    assert recorder.calls == one_batch * 2


def test_epoch_and_loss_hooks_get_epochs_and_mean_losses(tmp_path: Any) -> None:
    seen: dict[str, list[Any]] = {"pre": [], "post": [], "epoch_losses": [], "batch_losses": []}

    class Watch(RLCallback):
        def __init__(self) -> None:
            self.step_losses: list[torch.Tensor] = []

        def on_pre_epoch(self, trainer: Any, module: Any, epoch: int) -> None:
            seen["pre"].append(epoch)

        def on_post_epoch(self, trainer: Any, module: Any, epoch: int) -> None:
            seen["post"].append(epoch)

        def on_process_loss(self, trainer: Any, module: Any, batch: TensorDict, losses: TensorDict) -> TensorDict:
            losses = losses.clone()
            losses["loss_objective"] = losses["loss_objective"] * 0  # reweighting reaches the optimizer step
            return losses

        def on_post_loss(self, trainer: Any, module: Any, batch: TensorDict, losses: TensorDict) -> None:
            assert losses["loss_objective"].item() == 0.0
            self.step_losses.append(losses["loss_critic"].detach())

        def on_post_epoch_log(self, trainer: Any, module: Any, epoch: int, losses: TensorDict) -> dict[str, Any]:
            seen["epoch_losses"].append(losses["loss_critic"])
            return {"custom/epoch_critic": losses["loss_critic"]}

        def on_post_optim_complete_log(self, trainer: Any, module: Any, losses: TensorDict) -> dict[str, Any]:
            seen["batch_losses"].append((losses["loss_critic"], torch.stack(self.step_losses).mean()))
            self.step_losses.clear()
            return {"custom/batch_critic": losses["loss_critic"]}

    trainer, model, data = tiny_ppo_run(tmp_path, data={"total_frames": 128}, callbacks=[Watch()])
    trainer.fit(model, datamodule=data)
    assert seen["pre"] == seen["post"] == [0, 1, 0, 1]
    assert len(seen["epoch_losses"]) == 4
    for mean, expected in seen["batch_losses"]:
        torch.testing.assert_close(mean, expected)
    assert len(seen["batch_losses"]) == 2
    assert "custom/batch_critic" in trainer.callback_metrics


def test_counters_are_frames_and_updates_not_global_step(tmp_path: Any) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path)
    trainer.fit(model, datamodule=data)
    assert model.frames == 256
    assert model.updates == 4 * 4
    assert model.loop.batches == 4
    assert trainer.global_step == model.updates  # one optimizer here; SAC-like modules differ
    assert model.episodes > 0


def test_dispatch_table_only_holds_overriding_callbacks(tmp_path: Any) -> None:
    class OnlyPostOptim(RLCallback):
        def on_post_optim(self, trainer: Any, module: Any) -> None:
            pass

    silent, active = RLCallback(), OnlyPostOptim()
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[silent, active], max_steps=1)
    trainer.fit(model, datamodule=data)
    assert [fn.__self__ for fn in model.loop.hooks["on_post_optim"]] == [active]
    assert all(fn.__self__ is not silent for fns in model.loop.hooks.values() for fn in fns)
    # the module's own hook implementation is dispatched too, after the callbacks
    assert [fn.__self__ for fn in model.loop.hooks["on_post_steps_log"]] == [model]


def test_processing_hooks_replace_batches(tmp_path: Any) -> None:
    seen: dict[str, Any] = {}

    class ZeroRewards(RLCallback):
        def on_batch_process(self, trainer: Any, module: Any, batch: TensorDict) -> TensorDict:
            batch = batch.clone()
            batch[keys.NEXT_REWARD].zero_()
            return batch

        def on_pre_steps_log(self, trainer: Any, module: Any, batch: TensorDict) -> None:
            seen["reward_sum"] = batch[keys.NEXT_REWARD].sum().item()

        def on_process_optim_batch(self, trainer: Any, module: Any, batch: TensorDict) -> TensorDict:
            return batch[:8]

        def on_post_loss(self, trainer: Any, module: Any, batch: TensorDict, losses: TensorDict) -> None:
            seen.setdefault("sizes", set()).add(batch.shape[0])

    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[ZeroRewards()], max_steps=1)
    trainer.fit(model, datamodule=data)
    assert seen["reward_sum"] == 0.0
    assert seen["sizes"] == {8}


def test_logging_hooks_are_logged_and_put_on_the_progress_bar(tmp_path: Any) -> None:
    class Logs(RLCallback):
        def on_post_steps_log(self, trainer: Any, module: Any, batch: TensorDict) -> dict[str, Any]:
            return {"custom/reward_sum": batch[keys.NEXT_REWARD].sum(), "log_pbar": True}

    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[Logs()])
    trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics["custom/reward_sum"] == 64.0  # CartPole pays 1 per step
    assert "custom/reward_sum" in trainer.progress_bar_metrics
    for key in ("train/loss_objective", "train/loss_critic", "train/loss_entropy", "train/entropy",
                "train/approx_kl", "train/clip_fraction", "train/explained_variance",
                "rollout/episode_return", "rollout/episode_length", "time/fps", "frames"):  # fmt: skip
        assert key in trainer.callback_metrics, key


def test_optimizer_hook_can_take_over_the_step(tmp_path: Any) -> None:
    class SkipAll(RLCallback):
        def on_optimizer(self, trainer: Any, module: Any, losses: TensorDict) -> TensorDict:
            return losses.exclude(*[k for k in losses.keys() if k.startswith("loss_")])

    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[SkipAll()], max_steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=data)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert trainer.global_step == 0 and model.updates > 0


def test_function_hook_ports_register_op_with_an_interval(tmp_path: Any) -> None:
    calls: list[int] = []

    def log_every_tenth(batch: TensorDict) -> dict[str, float]:
        calls.append(len(calls))
        return {"custom/minibatch": float(batch.shape[0])}

    hook = FunctionHook("post_optim_log", log_every_tenth, 10)
    trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[hook], log_every_n_steps=1)
    trainer.fit(model, datamodule=data)
    assert model.updates == 16 and len(calls) == 2  # inner steps 1 and 11
    assert trainer.callback_metrics["custom/minibatch"] == 32.0


@pytest.mark.parametrize("with_len", [True, False], ids=["sized", "unsized"])
def test_rollouts_are_collected_by_the_current_policy(tmp_path: Any, monkeypatch: Any, with_len: bool) -> None:
    """Lightning prefetches one batch ahead by default; the rollout of update k must come from the policy
    as it is after update k-1. Recompute the log-probs of the collected actions with the current weights.

    Lightning skips its prefetch for sized data, and ``training_step(dataloader_iter)`` disables it too; the
    unsized case checks the second guard on its own (with prefetching, the errors here are ~1e-3)."""
    if not with_len:
        monkeypatch.delattr(_Rollouts, "__len__")
    checked: list[float] = []

    class CheckFresh(RLCallback):
        def on_batch_process(self, trainer: Any, module: Any, batch: TensorDict) -> None:
            with torch.no_grad():
                features = module.actor_body(module.encoder(batch[keys.OBSERVATION].flatten(0, 1)))
                log_prob, _ = module.head.log_prob_entropy(features, batch[keys.ACTION].flatten(0, 1))
            error = (log_prob - batch[keys.ACTION_LOG_PROB].flatten()).abs().max().item()
            checked.append(error)

    trainer, model, data = tiny_ppo_run(tmp_path, data={"total_frames": 320}, callbacks=[CheckFresh()])
    trainer.fit(model, datamodule=data)
    assert len(checked) == 5
    assert max(checked) < 1e-5, checked


def test_the_run_stops_when_the_frame_budget_is_spent(tmp_path: Any) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, data={"total_frames": 200})  # 3.1 batches -> 4
    trainer.fit(model, datamodule=data)
    assert model.frames == 256 and model.loop.batches == 4
    assert trainer.should_stop


def test_target_kl_stops_epochs_early(tmp_path: Any) -> None:
    trainer, model, data = tiny_ppo_run(
        tmp_path, model={"n_epochs": 5, "target_kl": 1e-12, "lr": 0.01, "anneal_lr": False}, max_steps=3
    )
    trainer.fit(model, datamodule=data)
    # every batch stops after its first epoch: 2 minibatches per epoch
    assert model.updates == 2 * model.loop.batches


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_validation_logs_evaluation_returns(tmp_path: Any, env_id: str) -> None:
    data = {"env_id": env_id, "num_envs": 2, "frames_per_batch": 64, "total_frames": 128, "eval_episodes": 2}
    trainer, model, datamodule = tiny_ppo_run(tmp_path, data=data, val_check_interval=1)
    trainer.fit(model, datamodule=datamodule)
    assert "val/episode_return" in trainer.callback_metrics
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    assert set(results[0]) == {"test/episode_return", "test/episode_length"}


def test_metrics_are_written_every_log_every_n_steps_batches_against_frames(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="run")
    trainer, model, data = tiny_ppo_run(
        tmp_path, data={"total_frames": 7 * 64}, logger=logger, log_every_n_steps=3, val_check_interval=100
    )
    trainer.fit(model, datamodule=data)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_rows = [r for r in rows if r["train/loss"]]
    # batches 3 and 6 by the interval, batch 7 because the budget ends; the x-axis is env frames
    assert [int(r["step"]) for r in train_rows] == [3 * 64, 6 * 64, 7 * 64]
    assert all(float(r["frames"]) == int(r["step"]) for r in train_rows)


class EpisodeLog(RLCallback):
    """Records every training episode the collector completed: (frames when it ended, return, length)."""

    def __init__(self) -> None:
        self.episodes: list[tuple[int, float, int]] = []

    def on_batch_process(self, trainer: Any, module: Any, batch: TensorDict) -> None:
        done = batch[keys.NEXT_DONE].squeeze(-1)
        steps = batch.batch_size[1]
        start = module.frames - module.data.global_frames_per_batch
        for env, t in done.nonzero().tolist():
            self.episodes.append(
                (
                    start + (t + 1) * module.data.global_frames_per_batch // steps,
                    batch[keys.NEXT_EPISODE_RETURN][env, t].item(),
                    int(batch[keys.NEXT_EPISODE_LENGTH][env, t].item()),
                )
            )


def window_means(episodes: list[tuple[int, float, int]], frames: int, window: int) -> tuple[float, float]:
    """Mean return and length of the last ``window`` episodes that ended by ``frames``."""
    ended = sorted((e for e in episodes if e[0] <= frames), key=lambda e: e[0])[-window:]
    return sum(e[1] for e in ended) / len(ended), sum(e[2] for e in ended) / len(ended)


def test_episode_curves_average_the_last_stats_window_episodes_of_every_batch(tmp_path: Any) -> None:
    """Logged every 3rd batch, rollout/episode_return is still the mean of the last stats_window episodes, those of
    the batches in between included."""
    logger = CSVLogger(tmp_path, name="run")
    episodes = EpisodeLog()
    trainer, model, data = tiny_ppo_run(
        tmp_path,
        data={"total_frames": 9 * 64, "stats_window": 7},
        logger=logger,
        log_every_n_steps=3,
        val_check_interval=100,
        callbacks=[episodes],
    )
    trainer.fit(model, datamodule=data)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["rollout/episodes"]]
    assert [int(r["step"]) for r in rows] == [3 * 64, 6 * 64, 9 * 64]
    assert len(episodes.episodes) > 3 * 7  # more episodes than three windows: some ended between the logs
    for row in rows:
        mean_return, mean_length = window_means(episodes.episodes, int(row["step"]), 7)
        assert float(row["rollout/episode_return"]) == pytest.approx(mean_return)
        assert float(row["rollout/episode_length"]) == pytest.approx(mean_length)
    # The window is checkpointed: a resumed run's first curve point still averages the episodes before the resume.
    path = tmp_path / "stopped.ckpt"
    trainer.save_checkpoint(path)
    logger = CSVLogger(tmp_path, name="resumed")
    trainer, model, data = tiny_ppo_run(
        tmp_path,
        data={"total_frames": 10 * 64, "stats_window": 7},
        logger=logger,
        log_every_n_steps=100,
        val_check_interval=100,
        callbacks=[episodes],
    )
    trainer.fit(model, datamodule=data, ckpt_path=path)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r["rollout/episodes"]]
    assert float(row["rollout/episode_return"]) == pytest.approx(window_means(episodes.episodes, 10 * 64, 7)[0])


@pytest.mark.parametrize(
    "options",
    [
        {"share_network": True},
        {"clip_value": 0.2, "activation": "relu"},
        {"normalize_observations": True},
    ],
    ids=["shared", "value-clip", "obs-norm"],
)
def test_ppo_options_train(tmp_path: Any, options: dict[str, Any]) -> None:
    trainer, model, data = tiny_ppo_run(tmp_path, model=options, data={"vectorization": "async", "num_envs": 2})
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=data)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if options.get("normalize_observations"):
        assert model.encoder.count.item() == 256  # every training observation, once, after its batch
        assert not torch.allclose(model.encoder.mean, torch.zeros_like(model.encoder.mean))


def test_lightning_backward_hooks_fire_when_implemented(tmp_path: Any) -> None:
    """Without backward/optimizer-step hooks the loop calls torch directly; with one, every step goes through
    Lightning."""

    class CountBackward(pl.Callback):
        def __init__(self) -> None:
            self.calls = 0

        def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
            self.calls += 1

    class CountSteps(pl.Callback):
        def __init__(self) -> None:
            self.calls = 0

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            self.calls += 1

    trainer, model, data = tiny_ppo_run(tmp_path)
    trainer.fit(model, datamodule=data)
    assert model._direct_torch

    assert trainer.global_step == model.updates == 16  # the direct step still counts optimizer steps

    for counter in (CountBackward(), CountSteps()):
        trainer, model, data = tiny_ppo_run(tmp_path, callbacks=[counter])
        trainer.fit(model, datamodule=data)
        assert not model._direct_torch
        assert counter.calls == model.updates == trainer.global_step == 16


def test_max_grad_norm_clips_each_update(tmp_path: Any) -> None:
    """Clipping runs in on_before_optimizer_step (after mixed-precision unscaling): a tiny max norm makes
    Adam's steps tiny too (its epsilon dominates gradients of norm 1e-9)."""
    changes = {}
    for norm in (None, 1e-9):
        trainer, model, data = tiny_ppo_run(tmp_path, model={"max_grad_norm": norm, "anneal_lr": False}, max_steps=1)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        trainer.fit(model, datamodule=data)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        changes[norm] = (after - before).abs().max().item()
    assert changes[1e-9] < 1e-3 * changes[None]


def test_two_runs_with_the_same_seed_are_identical(tmp_path: Any) -> None:
    from tests.test_sac import tiny_sac_run

    ends = []
    for run in range(2):
        trainer, model, data = tiny_ppo_run(tmp_path / f"ppo{run}")
        trainer.fit(model, datamodule=data)
        _, sac = tiny_sac_run(tmp_path / f"sac{run}")
        ends.append((model.state_dict(), sac.state_dict(), sac.replay_buffer.state_dict()["data"]))
    for first, second in zip(*ends, strict=True):
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("env_id", ["CartPole-v1", "rl_lightning.toy_envs:DictTarget-v0"])
def test_the_values_of_next_observations_come_from_the_following_step_only_where_they_are_equal(env_id: str) -> None:
    """PPO's value pass evaluates a next observation only where it is not the following step's observation (episode
    ends, the batch's last step): the values equal those of evaluating every next observation, also for a batch whose
    steps a hook reordered (no next observation is then the following one)."""
    torch.manual_seed(0)
    model = PPO(*_spaces(env_id), hidden_sizes=[8])
    envs = make_vec_env(env_id, 3, seed=0)
    batch = Collector(envs, model.act, 32).collect()
    envs.close()
    assert batch[keys.NEXT_DONE].any()
    for data in (batch, batch[:, torch.randperm(32)]):
        with torch.no_grad():
            values, next_values = model._values(data)
            torch.testing.assert_close(values, model.value(data[keys.OBSERVATION].flatten(0, 1)).reshape(3, 32, 1))
            expected = model.value(data[keys.NEXT_OBSERVATION].flatten(0, 1)).reshape(3, 32, 1)
        torch.testing.assert_close(next_values, expected)


def _spaces(env_id: str) -> tuple[gym.Space, gym.Space]:
    env = gym.make(env_id)
    spaces = env.observation_space, env.action_space
    env.close()
    return spaces

"""torchrl collectors and envs as the data: TorchRLDataModule, and UpdateWeights with a multi-process collector. Runs
in the torchrl environment (``bash scripts/setup_torchrl.sh``), skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase

pytest.importorskip(
    "torchrl", reason="torchrl is not importable here: run these tests in .venv-torchrl (scripts/setup_torchrl.sh)"
)

from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.envs import GymEnv, SerialEnv
from torchrl.weight_update import SharedMemWeightSyncScheme

from rl_lightning import DQN, PPO, RLCallback, RLModule, keys
from rl_lightning.callbacks import UpdateWeights
from rl_lightning.cli import cli
from rl_lightning.interop.torchrl_data import TorchRLDataModule
from rl_lightning.interop.torchrl_module import TorchRLModule
from tests.conftest import ROOT, quiet_trainer
from tests.test_torchrl import ppo_parts
from tests.torchrl_workers import cartpole, cartpole_actor


class BatchLog(RLCallback):
    """Records each collected batch, and the policy's weights after each batch's updates (``weights=True``: a
    module with a ``policy`` TensorDictModule)."""

    def __init__(self, weights: bool = True) -> None:
        self.batches: list[TensorDict] = []
        self.weights: list[TensorDict] = []
        self.record_weights = weights

    def on_batch_process(self, trainer: pl.Trainer, module: RLModule, batch: TensorDict) -> None:
        self.batches.append(batch.clone())

    def on_post_steps(self, trainer: pl.Trainer, module: RLModule) -> None:
        if self.record_weights:
            self.weights.append(TensorDict.from_module(module.policy).data.clone())


def hand_count(batches: list[TensorDict]) -> list[tuple[float, int]]:
    """``(return, length)`` of every episode that ended, by walking each env's rewards and dones."""
    reward = torch.cat([b[keys.NEXT_REWARD] for b in batches], dim=1)[..., 0]
    done = torch.cat([b[keys.NEXT_DONE] for b in batches], dim=1)[..., 0]
    episodes = []
    for env in range(reward.shape[0]):
        total, length = 0.0, 0
        for t in range(reward.shape[1]):
            total, length = total + float(reward[env, t]), length + 1
            if done[env, t]:
                episodes.append((total, length))
                total, length = 0.0, 0
    return episodes


def torchrl_ppo(data: TorchRLDataModule) -> TorchRLModule:
    loss, gae = ppo_parts()
    return TorchRLModule(data.observation_space, data.action_space, loss, advantage=gae, n_epochs=2, batch_size=32)


def cartpole_data(total_frames: int = 256, **overrides: object) -> TorchRLDataModule:
    arguments: dict[str, object] = {
        "env": cartpole,
        "env_id": "CartPole-v1",
        "frames_per_batch": 64,
        "total_frames": total_frames,
        "eval_episodes": 2,
        "stats_window": 1000,
        **overrides,
    }
    return TorchRLDataModule(**arguments)  # type: ignore[arg-type]


def test_a_torchrl_env_trains_torchrl_ppo_counting_frames_and_episodes_like_rl_data(tmp_path: Path) -> None:
    """A GymEnv stepped by a TorchRLModule's policy: the budget spent exactly, batches in the data contract,
    episodes counted as by hand, the envs seeded ``seed + rank * 1000``; a resumed run goes on to its budget."""
    pl.seed_everything(0)
    data = cartpole_data(seed=7)
    model = torchrl_ppo(data)
    log = BatchLog()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(
        tmp_path, log_every_n_steps=1, val_check_interval=2, enable_checkpointing=True, callbacks=[log, checkpoint]
    )
    trainer.fit(model, datamodule=data)

    assert model.frames == 256 and len(log.batches) == 4
    assert all(b.batch_size == torch.Size([1, 64]) for b in log.batches)
    first = log.batches[0]
    seeded = cartpole()
    seeded.set_seed(7)
    torch.testing.assert_close(first[keys.OBSERVATION][0, 0], seeded.reset()[keys.OBSERVATION])
    assert first[keys.IS_INIT][0, 0] and {keys.ACTION_LOG_PROB, "logits"} <= set(first.keys())
    # ("next", "observation") is the true next one: the following step's observation, except where an episode ended
    done = first[keys.NEXT_DONE][0, :-1, 0]
    follows = (first[keys.NEXT_OBSERVATION][0, :-1] == first[keys.OBSERVATION][0, 1:]).all(-1)
    assert done.any() and torch.equal(follows, ~done) and torch.equal(first[keys.IS_INIT][0, 1:, 0], done)

    episodes = hand_count(log.batches)
    ends = torch.cat([b[keys.NEXT_EPISODE_LENGTH] for b in log.batches], dim=1) > 0
    returns = torch.cat([b[keys.NEXT_EPISODE_RETURN] for b in log.batches], dim=1)[ends]
    lengths = torch.cat([b[keys.NEXT_EPISODE_LENGTH] for b in log.batches], dim=1)[ends]
    assert model.episodes == len(episodes) >= 5
    assert returns.tolist() == [r for r, _ in episodes] and lengths.tolist() == [n for _, n in episodes]
    mean = sum(r for r, _ in episodes) / len(episodes)
    assert trainer.callback_metrics["rollout/episode_return"].item() == pytest.approx(mean)
    assert "val/episode_return" in trainer.callback_metrics  # evaluation episodes in gymnasium's CartPole-v1

    resumed = torchrl_ppo(data)
    again = BatchLog()
    trainer = quiet_trainer(tmp_path / "resume", callbacks=[again])
    trainer.fit(resumed, datamodule=cartpole_data(total_frames=384, seed=7), ckpt_path=checkpoint.last_model_path)
    assert resumed.frames == 384 and len(again.batches) == 2 and resumed.episodes > model.episodes
    assert again.batches[0][keys.IS_INIT][:, 0].all()  # new envs, reset with the resumed seed


def test_rl_lightnings_own_algorithms_train_on_torchrl_envs(tmp_path: Path) -> None:
    """Built-in algorithms on torchrl data, through their ``act``: PPO steps a SerialEnv of two CartPoles (batches
    ``[2, T]``), DQN a single GymEnv (``[1, T]``) into its replay buffer."""
    pl.seed_everything(0)
    data = cartpole_data(env=lambda: SerialEnv(2, cartpole), num_envs=2, total_frames=128)
    ppo = PPO(data.observation_space, data.action_space, hidden_sizes=[16], n_epochs=1, batch_size=32)
    log = BatchLog(weights=False)
    quiet_trainer(tmp_path, callbacks=[log]).fit(ppo, datamodule=data)
    assert ppo.frames == 128 and [b.batch_size for b in log.batches] == [torch.Size([2, 32])] * 2
    assert ppo.episodes == len(hand_count(log.batches))
    assert keys.ACTION_LOG_PROB in log.batches[0].keys() and ppo.updates == 2 * 2

    data = cartpole_data(total_frames=192)
    dqn = DQN(data.observation_space, data.action_space, hidden_sizes=[16], init_random_frames=64, batch_size=32)
    log = BatchLog(weights=False)
    quiet_trainer(tmp_path / "dqn", callbacks=[log]).fit(dqn, datamodule=data)
    assert dqn.frames == 192 and [b.batch_size for b in log.batches] == [torch.Size([1, 64])] * 3
    assert dqn.updates > 0 and dqn.episodes == len(hand_count(log.batches))


def test_a_collector_built_by_the_user_is_seeded_per_rank_and_shut_down_with_the_fit(tmp_path: Path) -> None:
    """A torchrl Collector built around the module's own actor (no copy: no UpdateWeights needed) collects the whole
    budget from envs seeded ``seed + rank * 1000``; the fit shuts it down, and a second fit asks for a new one."""
    pl.seed_everything(0)
    loss, gae = ppo_parts()
    collector = Collector(
        cartpole(), loss.actor_network, frames_per_batch=64, total_frames=-1, auto_register_policy_transforms=False
    )
    data = TorchRLDataModule(collector, env_id="CartPole-v1", frames_per_batch=64, total_frames=128, seed=3)
    model = TorchRLModule(data.observation_space, data.action_space, loss, advantage=gae, batch_size=64)
    log = BatchLog()
    quiet_trainer(tmp_path, callbacks=[log]).fit(model, datamodule=data)
    assert model.frames == 128 and [b.batch_size for b in log.batches] == [torch.Size([1, 64])] * 2
    seeded = cartpole()
    seeded.set_seed(3)
    torch.testing.assert_close(log.batches[0][keys.OBSERVATION][0, 0], seeded.reset()[keys.OBSERVATION])
    with log.weights[0].to_module(model.policy):  # batch 2 came from the weights after batch 1's update
        logits = model.policy(log.batches[1].select(keys.OBSERVATION).clone())["logits"]
    torch.testing.assert_close(log.batches[1]["logits"], logits)
    fresh = TorchRLModule(data.observation_space, data.action_space, *ppo_parts(), batch_size=64)
    with pytest.raises(RuntimeError, match="shut down when the previous fit ended"):
        quiet_trainer(tmp_path / "again").fit(fresh, datamodule=data)


def test_update_weights_pushes_the_weights_to_a_multi_process_collectors_workers(tmp_path: Path) -> None:
    """A MultiSyncCollector whose two workers build their own actor (``policy_factory``): each batch is collected
    by the weights UpdateWeights last pushed. With ``interval=2`` batches 1 and 2 come from the weights pushed when
    the collector was built, batches 3 and 4 from those after batch 2's updates: the workers do not see an update
    that was not pushed, and do see one that was."""
    pl.seed_everything(0)

    def collector(policy: TensorDictModuleBase) -> MultiSyncCollector:
        return MultiSyncCollector(
            [cartpole, cartpole],
            policy_factory=cartpole_actor,  # weights of their own: no shared memory
            frames_per_batch=64,
            total_frames=-1,
            weight_sync_schemes={"policy": SharedMemWeightSyncScheme()},
        )

    data = TorchRLDataModule(collector, env_id="CartPole-v1", num_envs=2, frames_per_batch=64, total_frames=256)
    model = torchrl_ppo(data)
    initial = TensorDict.from_module(model.policy).data.clone()
    log, hook = BatchLog(), UpdateWeights(interval=2)
    quiet_trainer(tmp_path, callbacks=[log, hook]).fit(model, datamodule=data)

    assert model.frames == 256 and hook.batches == 4
    assert [b.batch_size for b in log.batches] == [torch.Size([2, 32])] * 4
    assert model.episodes == len(hand_count(log.batches))
    collected_by = [initial, initial, log.weights[1], log.weights[1]]
    for batch, weights in zip(log.batches, collected_by, strict=True):
        with weights.to_module(model.policy):
            logits = model.policy(batch.select(keys.OBSERVATION).clone())["logits"]
        torch.testing.assert_close(batch["logits"], logits)
    with log.weights[0].to_module(model.policy):  # batch 2 was not collected by the weights after batch 1
        logits = model.policy(log.batches[1].select(keys.OBSERVATION).clone())["logits"]
    assert not torch.allclose(log.batches[1]["logits"], logits)


def cartpole_factory_collector(policy: TensorDictModuleBase) -> Collector:
    return Collector(cartpole(), policy, frames_per_batch=64, total_frames=-1)


def test_the_cli_trains_on_a_torchrl_env_given_by_import_path_and_predict_rebuilds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data: {class_path: ...TorchRLDataModule, init_args: {env: tests.torchrl_workers.cartpole}}`` from the CLI (the
    function builds the env); ``predict --ckpt_path`` alone builds the data again, for evaluation only (a checkpoint
    holds no env or collector, which evaluation does not need)."""
    monkeypatch.chdir(ROOT)
    run = cli(
        [
            "fit",
            "--config=configs/torchrl_ppo.yaml",
            "--data=rl_lightning.interop.torchrl_data.TorchRLDataModule",
            "--data.env=tests.torchrl_workers.cartpole",
            "--data.num_envs=1",
            "--data.frames_per_batch=256",
            "--data.total_frames=512",
            "--data.eval_episodes=1",
            "--trainer.val_check_interval=2",
            "--trainer.log_every_n_steps=1",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert isinstance(run.datamodule, TorchRLDataModule) and run.model.frames == 512
    last = next(tmp_path.rglob("last.ckpt"))
    scored = cli(["predict", f"--ckpt_path={last}", f"--output={tmp_path / 'episodes.csv'}"])
    assert isinstance(scored.datamodule, TorchRLDataModule)
    assert len((tmp_path / "episodes.csv").read_text().splitlines()) == 1 + 1


def test_bad_input_is_refused_before_any_frame_is_collected() -> None:
    with pytest.raises(ValueError, match="takes a torchrl collector or a torchrl env, but both"):
        TorchRLDataModule(cartpole_factory_collector, env=cartpole, env_id="CartPole-v1")
    evaluation_only = TorchRLDataModule(env_id="CartPole-v1", frames_per_batch=64, total_frames=64)
    with pytest.raises(ValueError, match="neither a torchrl collector nor a torchrl env to train on"):
        evaluation_only.setup("fit")
    with pytest.raises(TypeError, match="collector is a str, not a torchrl collector"):
        TorchRLDataModule("Collector", env_id="CartPole-v1")
    with pytest.raises(ValueError, match="categorical_action_encoding=True"):
        TorchRLDataModule(env=GymEnv("CartPole-v1"), env_id="CartPole-v1", frames_per_batch=64, total_frames=64)
    acrobot = GymEnv("Acrobot-v1", categorical_action_encoding=True)
    with pytest.raises(
        ValueError, match=r"does not step 'CartPole-v1'.*observations of shape \[6\].*3 discrete actions"
    ):
        TorchRLDataModule(env=acrobot, env_id="CartPole-v1", frames_per_batch=64, total_frames=64)
    with pytest.raises(ValueError, match=r"does not step 'Pendulum-v1'.*action bounds \[-1.0\]..\[1.0\]"):
        TorchRLDataModule(env=GymEnv("MountainCarContinuous-v0"), env_id="Pendulum-v1", frames_per_batch=64)
    with pytest.raises(ValueError, match=r"batch_size=\[2\] \(2 envs\), but num_envs=1. Set num_envs=2"):
        TorchRLDataModule(env=SerialEnv(2, cartpole), env_id="CartPole-v1", frames_per_batch=64, total_frames=64)
    env = cartpole()
    policy = lambda td: td.set(keys.ACTION, env.action_spec.rand(td.batch_size))  # noqa: E731
    collector = Collector(env, policy, frames_per_batch=32, total_frames=-1, auto_register_policy_transforms=False)
    with pytest.raises(ValueError, match="collects frames_per_batch=32, but this data's frames_per_batch is 64"):
        TorchRLDataModule(collector, env_id="CartPole-v1", frames_per_batch=64, total_frames=256)
    collector.shutdown()
    collector = Collector(
        cartpole(), policy, frames_per_batch=64, total_frames=128, auto_register_policy_transforms=False
    )
    with pytest.raises(ValueError, match=r"stops after total_frames=128.*total_frames=-1"):
        TorchRLDataModule(collector, env_id="CartPole-v1", frames_per_batch=64, total_frames=256)
    collector.shutdown()

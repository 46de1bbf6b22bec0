"""SAC and its callbacks in real fits: replay, target networks, UTD, random warm-up, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rl_lightning import SAC, ReplayBuffer, RLDataModule
from rl_lightning.callbacks import ReplayBufferTrainer, TargetNetUpdaterHook, UTDRHook
from tests.conftest import quiet_trainer

BOX = gym.spaces.Box(-1.0, 1.0, (3,))
ACTIONS = gym.spaces.Box(-2.0, 2.0, (1,))


def tiny_sac_run(
    tmp_path: Path, model: dict[str, Any] | None = None, data: dict[str, Any] | None = None, **trainer: Any
) -> tuple[pl.Trainer, SAC]:
    pl.seed_everything(0)
    data = RLDataModule(
        **{"env_id": "Pendulum-v1", "num_envs": 2, "frames_per_batch": 32, "total_frames": 256, "eval_episodes": 2,
           **(data or {})}
    )  # fmt: skip
    module = SAC(
        data.observation_space,
        data.action_space,
        **{"hidden_sizes": [16], "batch_size": 32, "buffer_size": 1000, "init_random_frames": 64, **(model or {})},
    )
    built = quiet_trainer(tmp_path, **{"log_every_n_steps": 1, **trainer})
    built.fit(module, datamodule=data)
    return built, module


def test_sac_trains_with_replay_target_networks_and_utd(tmp_path: Path) -> None:
    trainer, model = tiny_sac_run(tmp_path, model={"utd_ratio": 0.5})
    # 8 batches of 32 transitions; the first 2 (64 frames) are random, then 16 updates per batch
    assert model.frames == 256 and model.updates == 6 * 16
    assert trainer.global_step == model.updates  # one Adam, a parameter group each for actor, critics, alpha
    assert len(model.replay_buffer) == 256
    assert trainer.callback_metrics["train/utd_ratio"] == pytest.approx(0.5)
    for key in ("train/loss_actor", "train/loss_qvalue", "train/loss_alpha", "train/alpha", "train/entropy",
                "train/q_mean", "val/episode_return"):  # fmt: skip
        assert key in trainer.callback_metrics, key
    assert any(isinstance(cb, ReplayBufferTrainer) for cb in trainer.callbacks)
    assert any(isinstance(cb, UTDRHook) for cb in trainer.callbacks)
    # soft updates moved the targets, but not all the way to the online critics
    online = torch.cat([p.flatten() for p in model.critics.parameters()])
    target = torch.cat([p.flatten() for p in model.target_critics.parameters()])
    assert not torch.equal(online, target)


def test_random_warm_up_collects_uniform_actions_without_updates(tmp_path: Path) -> None:
    _, model = tiny_sac_run(tmp_path, model={"init_random_frames": 256})
    assert model.updates == 0
    actions = model.replay_buffer.sample(256)["action"]
    assert actions.min() < -1.5 and actions.max() > 1.5  # spread over Pendulum's [-2, 2]


def test_actor_loss_does_not_train_the_critics() -> None:
    model = SAC(BOX, ACTIONS, hidden_sizes=[8], init_random_frames=0, auto_alpha=False)
    obs = torch.randn(5, 3)
    features = model.encoder(obs)
    action, _ = model.actor_head.sample(model.actor_body(features))
    model._q_detached(features, action).sum().backward()
    assert all(p.grad is None for p in model.critics.parameters())
    assert all(p.grad is not None for p in model.actor_body.parameters())


def test_hard_target_updates_copy_every_interval() -> None:
    model = SAC(BOX, ACTIONS, hidden_sizes=[8])
    hook = TargetNetUpdaterHook(tau=1.0, interval=3)
    with torch.no_grad():
        for p in model.critics.parameters():
            p.add_(1.0)

    def same() -> bool:
        pairs = zip(model.critics.parameters(), model.target_critics.parameters(), strict=True)
        return all(torch.equal(a, b) for a, b in pairs)

    hook.on_post_optim(None, model)  # type: ignore[arg-type]
    hook.on_post_optim(None, model)  # type: ignore[arg-type]
    assert not same()
    hook.on_post_optim(None, model)  # type: ignore[arg-type]
    assert same()


def test_target_updates_follow_the_online_networks_after_a_device_move() -> None:
    """Lightning moves a module at the end of every fit (``.cpu()``) and to the device at the start of the next:
    the hook must update from the parameters' new data, not from the data they had when it first ran."""
    model = SAC(BOX, ACTIONS, hidden_sizes=[8])
    hook = TargetNetUpdaterHook(tau=1.0, interval=1)
    hook.on_post_optim(None, model)  # type: ignore[arg-type]  # lists the parameters
    model.double().float()  # a device or dtype move: new data in the same parameter objects
    with torch.no_grad():
        for p in model.critics.parameters():
            p.add_(1.0)
    hook.on_post_optim(None, model)  # type: ignore[arg-type]
    for online, target in zip(model.critics.parameters(), model.target_critics.parameters(), strict=True):
        assert torch.equal(online, target)


def test_soft_target_update_is_polyak_averaging() -> None:
    model = SAC(BOX, ACTIONS, hidden_sizes=[8])
    before = [p.clone() for p in model.target_critics.parameters()]
    with torch.no_grad():
        for p in model.critics.parameters():
            p.add_(1.0)
    TargetNetUpdaterHook(tau=0.1).on_post_optim(None, model)  # type: ignore[arg-type]
    for old, new, online in zip(before, model.target_critics.parameters(), model.critics.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)


def test_sac_rejects_discrete_actions() -> None:
    with pytest.raises(ValueError, match=r"SAC needs a bounded 1-D Box action space; the env has Discrete\(2\)"):
        SAC(BOX, gym.spaces.Discrete(2))


def test_buffer_smaller_than_batch() -> None:
    with pytest.raises(ValueError, match="buffer_size=100 is smaller than batch_size=256"):
        SAC(BOX, ACTIONS, buffer_size=100)


def test_init_random_frames_beyond_the_budget(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="init_random_frames=10000 exceeds total_frames=256"):
        tiny_sac_run(tmp_path, model={"init_random_frames": 10_000})


def test_unwritable_memmap_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="scratch_dir"):
        SAC(BOX, ACTIONS, buffer_storage="memmap", buffer_dir=str(blocker / "buffer"))


@pytest.mark.parametrize("options", [{"prioritized": True}, {"n_step": 3}, {"tau": 1.0, "target_update_interval": 10}])
def test_sac_options_train(tmp_path: Path, options: dict[str, Any]) -> None:
    _, model = tiny_sac_run(tmp_path, model=options)
    assert model.updates > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_memmap_buffer_trains_and_checkpoints(tmp_path: Path) -> None:
    trainer, model = tiny_sac_run(tmp_path, model={"buffer_storage": "memmap", "buffer_dir": str(tmp_path / "buffer")})
    assert len(model.replay_buffer) == 256
    assert any((tmp_path / "buffer").rglob("*"))
    trainer.save_checkpoint(tmp_path / "sac.ckpt")
    restored = SAC.load_from_checkpoint(tmp_path / "sac.ckpt")
    assert restored.frames == model.frames


def test_warm_up_shorter_than_a_replay_sample(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"would hold 32 transitions at the first update.*fewer than batch_size=64"):
        tiny_sac_run(tmp_path, model={"init_random_frames": 0, "batch_size": 64})


def test_importance_weights_scale_each_sample_of_the_critic_loss() -> None:
    from tensordict import TensorDict

    model = SAC(BOX, ACTIONS, hidden_sizes=[8], prioritized=True)
    batch = TensorDict(
        {
            "observation": torch.randn(2, 3),
            "action": torch.rand(2, 1) * 4 - 2,
            "next": {
                "observation": torch.randn(2, 3),
                "reward": torch.randn(2, 1),
                "terminated": torch.zeros(2, 1, dtype=torch.bool),
                "discount": torch.full((2, 1), 0.99),
            },
            "weight": torch.tensor([[1.0], [0.0]]),
        },
        batch_size=[2],
    )
    torch.manual_seed(0)
    both = model.loss(batch.clone())["loss_qvalue"]
    torch.manual_seed(0)
    first = model.loss(batch[:1].clone())["loss_qvalue"]
    torch.testing.assert_close(both, 0.5 * first)  # the zero-weight sample contributes nothing


def test_a_resumed_run_keeps_the_update_schedule(tmp_path: Path) -> None:
    trainer, model = tiny_sac_run(tmp_path / "first", model={"utd_ratio": 0.5})
    trainer.save_checkpoint(tmp_path / "saved.ckpt")
    data = RLDataModule("Pendulum-v1", num_envs=2, frames_per_batch=32, total_frames=384, eval_episodes=2)
    resumed = SAC(
        data.observation_space, data.action_space, hidden_sizes=[16], batch_size=32, buffer_size=1000,
        init_random_frames=64, utd_ratio=0.5,
    )  # fmt: skip
    quiet_trainer(tmp_path / "resumed").fit(resumed, datamodule=data, ckpt_path=tmp_path / "saved.ckpt")
    assert resumed.updates == model.updates + 4 * 16  # 4 more batches of 32 transitions, utd 0.5


class Float64Observations(gym.ObservationWrapper):
    """Pendulum's observations divided by 3 as float64, as MuJoCo envs give them: values float32 cannot hold."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        assert isinstance(space, gym.spaces.Box)
        low, high = space.low.astype(np.float64) / 3.0, space.high.astype(np.float64) / 3.0
        self.observation_space = gym.spaces.Box(low, high, space.shape, np.float64)

    def observation(self, observation: Any) -> Any:
        return np.asarray(observation, dtype=np.float64) / 3.0


def test_float64_observations_are_stored_as_float32_unless_asked_and_train_the_same(tmp_path: Path) -> None:
    """The networks compute in float32, so float32 storage halves the observations' memory and trains exactly as
    float64 storage does."""
    float64_env = {"wrappers": ["tests.test_sac.Float64Observations"]}
    runs = {}
    for dtype in ("float32", "float64"):
        options = {} if dtype == "float32" else {"observation_dtype": "float64"}
        _, runs[dtype] = tiny_sac_run(tmp_path / dtype, model=options, data=float64_env)
    assert runs["float32"].observation_space.dtype == np.float64
    for dtype, model in runs.items():
        stored = model.replay_buffer.state_dict()["data"]
        assert stored["observation"].dtype == stored["next.observation"].dtype == getattr(torch, dtype)
        assert model.replay_buffer.sample(4)["observation"].dtype == getattr(torch, dtype)
    kept = runs["float64"].replay_buffer.state_dict()["data"]["observation"]
    assert not torch.equal(kept, kept.float().double())  # values float32 rounds: the two buffers differ
    stored = runs["float32"].replay_buffer.state_dict()["data"]["observation"]
    assert torch.equal(stored, kept.float())
    assert runs["float32"].updates == runs["float64"].updates > 0
    for name, value in runs["float64"].state_dict().items():
        assert torch.equal(runs["float32"].state_dict()[name], value), name


def test_observation_dtype_keeps_integer_observations_and_refuses_bad_values_and_mismatched_states() -> None:
    batch = TensorDict(
        {
            "observation": torch.randint(0, 255, (1, 4, 2), dtype=torch.uint8),
            "action": torch.zeros(1, 4, 1),
            "next": {
                "observation": torch.randint(0, 255, (1, 4, 2), dtype=torch.uint8),
                "reward": torch.zeros(1, 4, 1),
                **{flag: torch.zeros(1, 4, 1, dtype=torch.bool) for flag in ("terminated", "truncated", "done")},
            },
        },
        batch_size=[1, 4],
    )
    images = ReplayBuffer(capacity=8)
    images.extend(batch)
    assert images.sample(2)["observation"].dtype == torch.uint8  # integer observations as they are

    floats = batch.clone()
    floats["observation"] = floats["observation"].double()
    floats["next", "observation"] = floats["next", "observation"].double()
    kept = ReplayBuffer(capacity=8, observation_dtype="float64")
    kept.extend(floats)
    mismatch = r"stores observations as float64, but this buffer has observation_dtype='float32'. Build the buffer "
    with pytest.raises(ValueError, match=mismatch + r"with observation_dtype='float64' \(SAC: model.init_args"):
        ReplayBuffer(capacity=8).load_state_dict(kept.state_dict())
    for bad in ("float16", "double", torch.float32):
        with pytest.raises(ValueError, match=r"observation_dtype=.* is invalid: expected 'float32' .* or 'float64'"):
            SAC(BOX, ACTIONS, observation_dtype=bad)  # type: ignore[arg-type]

"""Env construction from the config: ids, wrapper specs, frame skip and vectorization."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from rl_lightning import keys
from rl_lightning.callbacks import LogValidationReward
from rl_lightning.collector import Collector
from rl_lightning.data import RLDataModule
from rl_lightning.envs import EpisodicLife, FrameSkip, make_env, make_vec_env, resolve_wrappers
from tests.conftest import tiny_ppo_run


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v9", "CartPole-v99", "no_such_module:NoSuchEnv-v0"])
def test_unknown_env_id(env_id: str) -> None:
    with pytest.raises(ValueError, match=rf"Unknown environment id '{env_id}'.*registered"):
        make_env(env_id)


def test_wrapper_spec_as_import_path() -> None:
    env = make_env("CartPole-v1", wrappers=["gymnasium.wrappers.FlattenObservation"])
    assert isinstance(env, gym.wrappers.FlattenObservation)
    env.close()


def test_wrapper_specs_with_init_args_apply_innermost_first() -> None:
    env = make_env(
        "CartPole-v1",
        wrappers=[
            {"class_path": "gymnasium.wrappers.TimeLimit", "init_args": {"max_episode_steps": 3}},
            {"class_path": "gymnasium.wrappers.ClipReward", "init_args": {"max_reward": 0.5}},
        ],
    )
    assert isinstance(env, gym.wrappers.ClipReward)
    assert isinstance(env.env, gym.wrappers.TimeLimit)
    env.reset(seed=0)
    steps = [env.step(0) for _ in range(3)]
    assert [reward for _, reward, *_ in steps] == [0.5, 0.5, 0.5]
    assert [truncated for *_, truncated, _ in steps] == [False, False, True]
    env.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ClipReward", r"'ClipReward' is not an import path; expected e\.g\. 'gymnasium\.wrappers\.ClipReward'"),
        ("no_such_module.Wrapper", r"Cannot import wrapper 'no_such_module\.Wrapper'.*full import path"),
        ("gymnasium.wrappers.NoSuchWrapper", r"Cannot import wrapper 'gymnasium\.wrappers\.NoSuchWrapper'"),
        ("gymnasium.make", r"Wrapper 'gymnasium\.make' is .*, not a gymnasium\.Wrapper subclass"),
        ("gymnasium.spaces.Box", r"Wrapper 'gymnasium\.spaces\.Box' is .*, not a gymnasium\.Wrapper subclass"),
        (
            "gymnasium.wrappers.TimeLimit",
            r"init_args \{\} do not fit gymnasium\.wrappers\.TimeLimit.*max_episode_steps",
        ),
        (
            {"class_path": "gymnasium.wrappers.TimeLimit", "init_args": {"max_steps": 3}},
            r"init_args \{'max_steps': 3\} do not fit gymnasium\.wrappers\.TimeLimit",
        ),
        ({"class": "gymnasium.wrappers.TimeLimit"}, r"Wrapper spec .* is not understood; expected an import path"),
        (
            {"class_path": "gymnasium.wrappers.ClipReward", "args": {}},
            r"Wrapper spec .* is not understood",
        ),
    ],
)
def test_bad_wrapper_spec(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_wrappers([spec])
    with pytest.raises(ValueError, match=message):
        make_env("CartPole-v1", wrappers=[spec])


class CountingEnv(gym.Env):
    """Pays reward ``t`` at its ``t``-th step and ends at step ``end`` (terminated or truncated)."""

    observation_space = gym.spaces.Box(0.0, np.inf, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, end: int, truncate: bool) -> None:
        self.end, self.truncate, self.t = end, truncate, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        ended = self.t >= self.end
        obs = np.full(1, self.t, dtype=np.float32)
        return obs, float(self.t), ended and not self.truncate, ended and self.truncate, {"t": self.t}


@pytest.mark.parametrize("truncate", [False, True])
def test_frame_skip_sums_rewards_and_stops_at_the_end(truncate: bool) -> None:
    env = FrameSkip(CountingEnv(end=3, truncate=truncate), skip=2)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(0)
    assert (reward, terminated, truncated, info["t"], obs[0]) == (1.0 + 2.0, False, False, 2, 2.0)
    obs, reward, terminated, truncated, info = env.step(0)
    # The episode ended on the 3rd inner step: the 4th never ran.
    assert (reward, terminated, truncated, info["t"], obs[0]) == (3.0, not truncate, truncate, 3, 3.0)


def test_frame_skip_in_make_env() -> None:
    env = make_env("CartPole-v1", frame_skip=3)
    assert isinstance(env, FrameSkip) and env.skip == 3
    env.reset(seed=0)
    assert env.step(0)[1] == 3.0
    env.close()
    with pytest.raises(ValueError, match="FrameSkip needs skip >= 1, got 0"):
        FrameSkip(CountingEnv(end=3, truncate=False), skip=0)


@pytest.mark.parametrize(
    ("vectorization", "cls"), [("sync", gym.vector.SyncVectorEnv), ("async", gym.vector.AsyncVectorEnv)]
)
def test_make_vec_env_steps(vectorization: Any, cls: type) -> None:
    envs = make_vec_env("CartPole-v1", num_envs=2, vectorization=vectorization)
    try:
        assert isinstance(envs, cls)
        assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        first, _ = envs.reset(seed=0)
        obs, reward, terminated, truncated, _ = envs.step(np.array([0, 1]))
    finally:
        envs.close()
    assert first.shape == obs.shape == (2, 4)
    assert reward.tolist() == [1.0, 1.0]
    assert not terminated.any() and not truncated.any()
    # Envs i are seeded seed + i, as single envs would be.
    for i, action in enumerate([0, 1]):
        single = gym.make("CartPole-v1")
        assert np.array_equal(single.reset(seed=i)[0], first[i])
        assert np.array_equal(single.step(action)[0], obs[i])
        single.close()


def test_make_vec_env_rejects_unknown_vectorization() -> None:
    with pytest.raises(
        ValueError, match=r"vectorization='threads' is not supported; use one of 'sync', 'async', 'envpool'"
    ):
        make_vec_env("CartPole-v1", num_envs=2, vectorization="threads")  # type: ignore[arg-type]


def test_env_kwargs_go_to_gym_make() -> None:
    envs = make_vec_env("CartPole-v1", num_envs=2, env_kwargs={"max_episode_steps": 3}, seed=0)
    try:
        truncated = [envs.step(np.array([0, 1]))[3] for _ in range(3)]
    finally:
        envs.close()
    assert not truncated[0].any() and not truncated[1].any() and truncated[2].all()
    with pytest.raises(ValueError, match=r"env_kwargs=\{'no_such_option': 1\} do not fit env 'CartPole-v1'"):
        make_env("CartPole-v1", env_kwargs={"no_such_option": 1})


def test_ale_ids_import_ale_py_by_themselves() -> None:
    # A fresh interpreter: nothing has imported ale_py (which registers the ALE/ ids) before make_env.
    code = (
        "import sys; from rl_lightning.envs import make_env; assert 'ale_py' not in sys.modules; "
        "env = make_env('ALE/Pong-v5', env_kwargs={'frameskip': 1, 'repeat_action_probability': 0.0}); "
        "print(env.observation_space.shape, env.unwrapped._frameskip)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip().splitlines()[-1] == "(210, 160, 3) 1"


def test_ale_ids_without_ale_py_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ale_py", None)  # import ale_py now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install 'rl-lightning[atari]'")):
        make_env("ALE/Pong-v5")


def lives_and_frame(env: gym.Env) -> tuple[int, int]:
    ale = env.unwrapped.ale  # type: ignore[attr-defined]
    return int(ale.lives()), int(ale.getEpisodeFrameNumber())


def test_episodic_life_ends_episodes_at_life_loss_and_resets_only_when_the_game_is_over() -> None:
    env = EpisodicLife(make_env("ALE/Breakout-v5", env_kwargs={"repeat_action_probability": 0.0}))
    env.reset(seed=0)
    assert lives_and_frame(env) == (5, 0)
    rng = np.random.default_rng(0)
    for lives_left in (4, 3, 2, 1):
        while True:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
            if terminated or truncated:
                break
        assert terminated and not truncated
        lives, frame = lives_and_frame(env)
        assert lives == lives_left and not env.game_over
        env.reset()  # a lost life: the game goes on, one no-op step later
        assert lives_and_frame(env) == (lives_left, frame + 4)
    while not env.step(int(rng.integers(4)))[2]:
        pass
    assert env.game_over and lives_and_frame(env)[0] == 0
    env.reset()  # the game is over: a real reset
    assert lives_and_frame(env) == (5, 0)
    env.close()
    with pytest.raises(ValueError, match="EpisodicLife reads the lives of an Atari game"):
        EpisodicLife(gym.make("CartPole-v1"))


def half_reward() -> dict[str, Any]:
    """A training wrapper that scales CartPole's rewards (1 -> 0.5)."""
    return {"class_path": "gymnasium.wrappers.ClipReward", "init_args": {"max_reward": 0.5}}


def test_train_wrappers_shape_training_envs_only_and_leave_episode_statistics_raw() -> None:
    data = RLDataModule(
        "CartPole-v1",
        num_envs=2,
        frames_per_batch=128,
        total_frames=128,
        train_wrappers=[half_reward()],
        eval_episodes=2,
        eval_envs=2,
    )
    collector = Collector(data.make_eval_envs(2), lambda obs: {"action": torch.zeros(len(obs), dtype=torch.int64)}, 64)
    evaluation = collector.collect()  # the evaluation envs: raw rewards
    collector.envs.close()
    assert (evaluation[keys.NEXT_REWARD] == 1.0).all()
    envs = make_vec_env("CartPole-v1", 2, train_wrappers=[half_reward()])
    training = Collector(envs, collector.policy, 64, episodes_from_info=True).collect()
    envs.close()
    assert (training[keys.NEXT_REWARD] == 0.5).all()
    done = training[keys.NEXT_DONE]
    assert done.sum() >= 4
    # The statistics of each ended episode are the raw return (1 per step) and the length.
    assert torch.equal(training[keys.NEXT_EPISODE_RETURN][done], training[keys.NEXT_EPISODE_LENGTH][done].float())
    assert (training[keys.NEXT_EPISODE_LENGTH][done] >= 8).all()
    assert not training[keys.NEXT_EPISODE_RETURN][~done].any()


def test_a_reward_scaling_train_wrapper_does_not_change_rollout_episode_return(tmp_path: Path) -> None:
    evaluations = LogValidationReward(interval_frames=128, num_episodes=2, num_envs=2)
    trainer, module, data = tiny_ppo_run(tmp_path, data={"train_wrappers": [half_reward()]}, callbacks=[evaluations])
    trainer.fit(module, datamodule=data)
    mean_return, mean_length, episodes = module.episode_stats.compute().tolist()
    assert episodes >= 10 and mean_length > 8
    assert mean_return == pytest.approx(mean_length)  # CartPole's raw reward, not the training wrapper's 0.5
    # Evaluation envs have no training wrappers: the validation and LogValidationReward returns are raw too.
    metrics = trainer.callback_metrics
    assert metrics["val/episode_return"] == pytest.approx(metrics["val/episode_length"].item())
    result = evaluations.run_evaluation(trainer, module)
    assert result["eval/episode_return"] == pytest.approx(result["eval/episode_length"])


def test_episodic_life_as_a_train_wrapper_reports_whole_games() -> None:
    envs = make_vec_env(
        "ALE/Breakout-v5",
        2,
        env_kwargs={"repeat_action_probability": 0.0},
        train_wrappers=["rl_lightning.envs.EpisodicLife"],
    )
    rng = torch.Generator().manual_seed(0)
    collector = Collector(
        envs, lambda obs: {"action": torch.randint(0, 4, (len(obs),), generator=rng)}, 400, episodes_from_info=True
    )
    collector.reset(seed=0)
    batch = collector.collect()
    envs.close()
    done = batch[keys.NEXT_DONE][..., 0]
    games = batch[keys.NEXT_EPISODE_LENGTH][..., 0] > 0
    assert games.sum() >= 2 and (games & done).equal(games)
    assert done.sum() >= 5 * games.sum()  # every game ends 5 training episodes, one per life
    # A game's length counts its agent steps across its lives, the no-op step after each of 4 lost lives included;
    # the first game of each env starts at the reset before t = 0.
    for env in range(2):
        ends = games[env].nonzero()[:, 0].tolist()
        starts = [-1, *ends[:-1]]
        lengths = batch[keys.NEXT_EPISODE_LENGTH][env, ends, 0].tolist()
        assert lengths == [end - start + 4 for start, end in zip(starts, ends, strict=True)]


def test_envpool_refuses_gymnasium_side_options() -> None:
    with pytest.raises(ValueError, match=r"vectorization='envpool' does not take wrappers=\['gymnasium"):
        make_vec_env("CartPole-v1", 2, ["gymnasium.wrappers.RecordEpisodeStatistics"], vectorization="envpool")
    with pytest.raises(ValueError, match="vectorization='envpool' does not take frame_skip=2"):
        make_vec_env("CartPole-v1", 2, frame_skip=2, vectorization="envpool")
    with pytest.raises(ValueError, match="vectorization='envpool' does not take train_wrappers"):
        RLDataModule("CartPole-v1", 2, 8, 8, vectorization="envpool", train_wrappers=[half_reward()])
    with pytest.raises(ValueError, match="pixels=True renders frames"):
        RLDataModule("CartPole-v1", 2, 8, 8, vectorization="envpool", pixels=True)


def test_data_module_takes_envpool_vectorization() -> None:
    pytest.importorskip("envpool")
    data = RLDataModule("CartPole-v1", num_envs=2, frames_per_batch=32, total_frames=32, vectorization="envpool")
    assert data.observation_space.shape == (4,) and data.action_space == gym.spaces.Discrete(2)
    envs = data.make_eval_envs(2)
    try:
        assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        batch = Collector(envs, lambda obs: {"action": torch.zeros(len(obs), dtype=torch.int64)}, 32).collect()
    finally:
        envs.close()
    done = batch[keys.NEXT_DONE]
    assert done.any() and (batch[keys.NEXT_EPISODE_LENGTH][done] > 0).all()

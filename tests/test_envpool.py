"""EnvPool as a vectorization (rl_lightning.envpool): the batch contract of the gymnasium collector.

EnvPool's envs cannot encode episode and step in their observations, so the reference is EnvPool itself: the same
task, seeds and per-env actions stepped raw (next-step autoreset), its episodes cut at its done flags. Actions are
constant per env, so an env's trajectory does not depend on when its autoreset step happens.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rl_lightning.checkpoint import RLCheckpointIO
from rl_lightning.collector import Collector
from rl_lightning.envpool import EnvPoolVecEnv, envpool_task_id, evaluation_env_kwargs, make_envpool_vec_env
from tests.conftest import quiet_trainer, tiny_ppo_run
from tests.probe import SaveRankState

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="envpool is not installed (the extra)"),
    # EnvPool builds gymnasium Boxes from float64 bounds of float32 spaces; gymnasium warns about the cast.
    pytest.mark.filterwarnings("ignore:.*precision lowered by casting.*"),
]


def constant_policy(actions: list[int]) -> Any:
    """Env ``i`` always takes ``actions[i]``."""
    action = torch.tensor(actions, dtype=torch.int64)
    return lambda obs: {"action": action.clone()}


def row(obs: Any, i: int) -> Any:
    """A copy of observation ``i`` of a batch (an array, or a dict of arrays for Dict spaces)."""
    return {key: row(value, i) for key, value in obs.items()} if isinstance(obs, dict) else obs[i].copy()


def as_numpy(obs: Any) -> Any:
    """A batch entry (a tensor, or a TensorDict for Dict spaces) as numpy."""
    return {key: as_numpy(value) for key, value in obs.items()} if hasattr(obs, "keys") else obs.numpy()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    return np.array_equal(a, b)


def raw_episodes(
    task: str, actions: list[int], seed: int, steps: int, **kwargs: Any
) -> list[list[tuple[list[np.ndarray], float, bool, bool]]]:
    """Per env, the episodes EnvPool itself gives with next-step autoreset: (observations from the reset one to the
    final one, return, terminated, truncated), cut at its done flags; the step after one (EnvPool's autoreset,
    reward 0) starts the next episode."""
    import envpool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pool = envpool.make(envpool_task_id(task), env_type="gymnasium", num_envs=len(actions), seed=seed, **kwargs)
    obs, _ = pool.reset()
    episodes: list[list[Any]] = [[] for _ in actions]
    current = [[row(obs, i)] for i in range(len(actions))]
    returns = np.zeros(len(actions))
    ended = np.zeros(len(actions), dtype=bool)
    for _ in range(steps):
        obs, reward, term, trunc, _ = pool.step(np.array(actions))
        for i in range(len(actions)):
            if ended[i]:  # the autoreset step: its observation starts the next episode
                assert reward[i] == 0 and not (term[i] or trunc[i])
                current[i] = [row(obs, i)]
                continue
            current[i].append(row(obs, i))
            returns[i] += reward[i]
            if term[i] or trunc[i]:
                episodes[i].append((current[i], float(returns[i]), bool(term[i]), bool(trunc[i])))
                returns[i] = 0.0
        ended = term | trunc
    pool.close()
    return episodes


def collected_episodes(batch: Any) -> list[list[tuple[list[np.ndarray], float, bool, bool, float, int]]]:
    """Per env, the complete episodes of a collector batch: (observations from the reset one to the final one,
    return, terminated, truncated, the collector's episode_return and episode_length)."""
    n, steps = batch.batch_size
    episodes: list[list[Any]] = [[] for _ in range(n)]
    for i in range(n):
        current: list[np.ndarray] | None = None
        ret = 0.0
        for t in range(steps):
            if batch["is_init"][i, t, 0]:
                current, ret = [as_numpy(batch["observation"][i, t])], 0.0
            elif current is not None:  # the observation at t is the one stored as next at t - 1
                assert same(as_numpy(batch["observation"][i, t]), current[-1])
            if current is None:
                continue
            current.append(as_numpy(batch["next", "observation"][i, t]))
            ret += float(batch["next", "reward"][i, t, 0])
            if batch["next", "done"][i, t, 0]:
                term, trunc = bool(batch["next", "terminated"][i, t, 0]), bool(batch["next", "truncated"][i, t, 0])
                reported = (
                    float(batch["next", "episode_return"][i, t, 0]),
                    int(batch["next", "episode_length"][i, t, 0]),
                )
                episodes[i].append((current, ret, term, trunc, *reported))
                current = None
    return episodes


def check_against_raw(task: str, actions: list[int], seed: int, steps: int, **kwargs: Any) -> list[Any]:
    """Collects ``steps`` steps through the adapter and the Collector and checks every complete episode against
    EnvPool's own; returns the collected episodes."""
    envs = make_envpool_vec_env(task, len(actions), seed=seed, env_kwargs=kwargs)
    collector = Collector(envs, constant_policy(actions), steps_per_batch=steps)
    collector.reset(seed=seed)
    batch = collector.collect()
    envs.close()
    got = collected_episodes(batch)
    want = raw_episodes(task, actions, seed, 2 * steps, **kwargs)  # its autoreset steps take steps of their own
    for i, episodes in enumerate(got):
        assert episodes, f"env {i} finished no episode in {steps} steps"
        for k, (observations, ret, term, trunc, reported_return, reported_length) in enumerate(episodes):
            raw_obs, raw_ret, raw_term, raw_trunc = want[i][k]
            assert len(observations) == len(raw_obs), (i, k)
            for t, (a, b) in enumerate(zip(observations, raw_obs, strict=True)):
                assert same(a, b), f"env {i}, episode {k}, step {t}"
            assert (ret, term, trunc) == (raw_ret, raw_term, raw_trunc)
            assert reported_return == pytest.approx(raw_ret) and reported_length == len(raw_obs) - 1
    return [e for episodes in got for e in episodes]


def test_cartpole_final_and_reset_observations_terminated() -> None:
    episodes = check_against_raw("CartPole-v1", [0, 1, 1, 0], seed=3, steps=60)
    assert all(term and not trunc for _, _, term, trunc, _, _ in episodes)
    for observations, *_ in episodes:  # CartPole's reset states are in [-0.05, 0.05]; it ends beyond 2.4 m or 12°
        assert np.abs(observations[0]).max() <= 0.05
        assert abs(observations[-1][0]) > 2.4 or abs(observations[-1][2]) > 0.2095


def test_cartpole_truncation_is_not_termination() -> None:
    # CartPole's 500-step limit, made cheap: max_episode_steps=6 truncates before pushing one way can terminate
    episodes = check_against_raw("CartPole-v1", [0, 1], seed=0, steps=20, max_episode_steps=6)
    assert len(episodes) == 6
    assert all(trunc and not term and length == 6 for _, _, term, trunc, _, length in episodes)


def test_breakout_lives_terminate_and_the_limit_truncates() -> None:
    # FIRE (1) without moving loses lives quickly; with episodic_life a lost life is a termination and EnvPool's
    # autoreset continues the game, which the adapter keeps (an explicit reset would restart it). Env 1 only NOOPs
    # and is truncated by max_episode_steps.
    kwargs = {"episodic_life": True, "max_episode_steps": 40, "num_threads": 2}
    episodes = check_against_raw("ALE/Breakout-v5", [1, 0], seed=1, steps=90, **kwargs)
    assert any(term for _, _, term, _, _, _ in episodes) and any(trunc for _, _, _, trunc, _, _ in episodes)
    first = episodes[0][0][0]
    assert first.shape == (4, 84, 84) and first.dtype == np.uint8


def test_dict_observations_minigrid() -> None:
    # MiniGrid's Dict observation (direction: Discrete, image, mission) as nested TensorDicts; env 0 walks forward
    # (into the wall), env 1 turns, and max_episode_steps truncates both
    episodes = check_against_raw("MiniGrid-Empty-5x5-v0", [2, 1], seed=0, steps=14, max_episode_steps=6)
    assert all(trunc and not term for _, _, term, trunc, _, _ in episodes)
    assert episodes[0][0][0].keys() == {"direction", "image", "mission"}


def test_whole_game_statistics_count_raw_rewards_over_all_lives() -> None:
    """With episodic_life and reward_clip, Collector(episodes_from_info=True) reports each whole game (game over or
    truncation) with its unclipped return, as EnvPool's info["reward"] and info["terminated"] tell, and nothing at a
    lost life."""
    import envpool

    # FIRE, RIGHTFIRE: Space Invaders scores 5-30 a hit (clipped to 1) and loses a first life after about 180 steps
    kwargs = {"episodic_life": True, "reward_clip": True, "max_episode_steps": 200, "num_threads": 2}
    actions, steps = [1, 4], 210
    envs = make_envpool_vec_env("ALE/SpaceInvaders-v5", 2, seed=2, env_kwargs=kwargs)
    collector = Collector(envs, constant_policy(actions), steps_per_batch=steps, episodes_from_info=True)
    batch = collector.collect()
    envs.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pool = envpool.make("SpaceInvaders-v5", env_type="gymnasium", num_envs=2, seed=2, **kwargs)
    pool.reset()
    games: list[list[tuple[float, int]]] = [[], []]
    clipped_returns = []
    raw_return, length, clipped = np.zeros(2), np.zeros(2, dtype=np.int64), np.zeros(2)
    after_done = np.zeros(2, dtype=bool)
    for _ in range(2 * steps):
        _, reward, term, trunc, info = pool.step(np.array(actions))
        for i in range(2):
            if after_done[i]:  # EnvPool's autoreset step, which the adapter hides
                continue
            raw_return[i] += info["reward"][i]
            clipped[i] += reward[i]
            length[i] += 1
            if trunc[i] or info["terminated"][i]:
                games[i].append((float(raw_return[i]), int(length[i])))
                clipped_returns.append(clipped[i])
                raw_return[i], length[i], clipped[i] = 0.0, 0, 0.0
        after_done = term | trunc

    lives_lost = 0
    for i in range(2):
        ended = batch["next", "done"][i, :, 0]
        reported = batch["next", "episode_length"][i, :, 0] > 0
        lives_lost += int((ended & ~reported).sum())
        got = list(
            zip(
                batch["next", "episode_return"][i, reported, 0].tolist(),
                batch["next", "episode_length"][i, reported, 0].tolist(),
                strict=True,
            )
        )
        assert got and got == games[i][: len(got)]
    assert lives_lost > 0  # episodes (lives) that ended without a game's statistics
    raw_returns = [r for g in games for r, _ in g]
    assert all(r > c for r, c in zip(raw_returns, clipped_returns, strict=True))  # unclipped


def test_pong_batch_is_uint8_channels_first() -> None:
    envs = make_envpool_vec_env("ALE/Pong-v5", 2, seed=0, env_kwargs={"num_threads": 2})
    assert envs.single_observation_space.shape == (4, 84, 84)
    batch = Collector(envs, constant_policy([2, 3]), steps_per_batch=8).collect()
    envs.close()
    assert batch["observation"].dtype == torch.uint8 and batch["next", "observation"].shape == (2, 8, 4, 84, 84)
    assert batch["observation"][:, 1:].equal(batch["next", "observation"][:, :-1])  # no episode ends in 8 steps


def test_per_env_seeds_are_reproducible() -> None:
    envs = make_envpool_vec_env("CartPole-v1", 3, seed=7)
    first, _ = envs.reset(seed=7)
    envs.step(np.ones(3, dtype=np.int64))
    again, _ = envs.reset(seed=7)  # rebuilds the pool: the same episodes again
    other, _ = envs.reset(seed=8)
    unseeded, _ = envs.reset()  # continues the random stream of seed 8
    envs.close()
    assert np.array_equal(first, again)
    assert np.array_equal(first[1:], other[:2])  # env i is seeded seed + i
    assert not np.array_equal(other[2], unseeded[2])
    one = make_envpool_vec_env("CartPole-v1", 1, seed=9)
    assert np.array_equal(one.reset(seed=9)[0][0], first[2])
    assert np.array_equal(one.reset(seed=2**31 + 9)[0][0], first[2])  # beyond int32: modulo 2**31 - num_envs + 1
    one.close()


def test_collector_batches_repeat_with_the_seed() -> None:
    def run(seed: int) -> Any:
        envs = make_envpool_vec_env("CartPole-v1", 2, seed=0)
        collector = Collector(envs, lambda obs: {"action": (obs[:, 2] > 0).long()}, steps_per_batch=40)
        collector.reset(seed=seed)
        batch = collector.collect()
        envs.close()
        return batch

    a, b, c = run(11), run(11), run(12)
    assert a["next", "observation"].equal(b["next", "observation"]) and a["action"].equal(b["action"])
    assert not a["observation"].equal(c["observation"])


def test_spaces_contract_and_close() -> None:
    envs = make_envpool_vec_env("Pendulum-v1", 2, seed=0)
    assert envs.single_action_space.shape == (1,) and envs.action_space.shape == (2, 1)
    assert envs.observation_space.shape == (2, 3) and envs.render_mode is None
    obs, reward, term, trunc, info = envs.step(np.zeros((2, 1), dtype=np.float32))
    assert obs.shape == (2, 3) and reward.shape == term.shape == trunc.shape == (2,) and "final_obs" not in info
    envs.close()
    envs.close()  # closing twice does nothing
    assert envs.closed


def test_ids_and_refusals() -> None:
    assert envpool_task_id("ALE/Pong-v5") == "Pong-v5" and envpool_task_id("CartPole-v1") == "CartPole-v1"
    with pytest.raises(ValueError, match=r"'ALE/Pongg-v5' is not an EnvPool task.*'Pong-v5'"):
        make_envpool_vec_env("ALE/Pongg-v5", 2)
    with pytest.raises(ValueError, match=r"batch_size=4.*asynchronous mode"):
        EnvPoolVecEnv("CartPole-v1", 8, env_kwargs={"batch_size": 4})
    with pytest.raises(ValueError, match="num_envs argument"):
        EnvPoolVecEnv("CartPole-v1", 2, env_kwargs={"num_envs": 4})
    with pytest.raises(ValueError, match=r"seed=-1 is negative; seeds are integers >= 0"):
        EnvPoolVecEnv("CartPole-v1", 2, seed=-1)
    assert evaluation_env_kwargs({"episodic_life": True, "reward_clip": True, "num_threads": 2}) == {
        "episodic_life": False,
        "reward_clip": False,
        "num_threads": 2,
    }


def test_missing_envpool_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "envpool", None)  # makes `import envpool` raise ImportError
    with pytest.raises(ImportError, match=r"pip install rl-lightning\[envpool\]"):
        make_envpool_vec_env("CartPole-v1", 2)


class _RecordEnvs(SaveRankState):
    """Also keeps the type of the training envs the collector stepped."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.envs_type = type(trainer.datamodule._collector.envs)


# The resumed run writes no checkpoints: Lightning notes that the ModelCheckpoint which wrote last.ckpt is absent.
@pytest.mark.filterwarnings("ignore:.*callbacks used to create the checkpoint need to be provided.*")
def test_ppo_fits_through_rl_data_module_on_envpool_and_resumes(tmp_path: Path) -> None:
    """RLDataModule(vectorization="envpool"): a real fit of PPO on CartPole-v1 with validation, reproducible from
    data.seed (EnvPool rebuilt with the per-rank seed), then resumed from its last checkpoint."""
    data = {"vectorization": "envpool", "num_envs": 4, "frames_per_batch": 256, "total_frames": 2048, "seed": 5}
    runs = []
    for attempt in range(2):
        checkpoint = ModelCheckpoint(dirpath=tmp_path / f"ckpt{attempt}", save_last=True)
        trainer, model, datamodule = tiny_ppo_run(
            tmp_path / f"run{attempt}", data=data, enable_checkpointing=True, callbacks=[checkpoint]
        )
        trainer.fit(model, datamodule=datamodule)
        assert model.frames == 2048 and np.isfinite(float(trainer.callback_metrics["val/episode_return"]))
        assert datamodule._collector is None  # the envs were closed at teardown
        runs.append(model)
    for key, value in runs[0].state_dict().items():  # the same seed, the same EnvPool episodes, the same updates
        assert torch.equal(runs[1].state_dict()[key], value), key

    saved = tmp_path / "ckpt0" / "last.ckpt"
    probe = _RecordEnvs(str(tmp_path / "start"), at_start=True)
    _, resumed, datamodule = tiny_ppo_run(tmp_path / "resume", data={**data, "total_frames": 3072})
    quiet_trainer(tmp_path / "resume", callbacks=[probe], val_check_interval=2).fit(
        resumed, datamodule=datamodule, ckpt_path=saved
    )
    at_start = torch.load(tmp_path / "start" / "rank0.pt", weights_only=True)
    checkpoint_state = RLCheckpointIO().load_checkpoint(saved)
    assert at_start["frames"] == checkpoint_state["rl_lightning"]["frames"] == 2048
    for name, value in checkpoint_state["state_dict"].items():
        assert torch.equal(at_start["params"][name], value), name
    assert probe.envs_type is EnvPoolVecEnv
    assert resumed.frames == 3072 and resumed.updates > runs[0].updates

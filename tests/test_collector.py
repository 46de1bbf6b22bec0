"""The collector over real gymnasium vector envs: the data contract of ``rl_lightning.keys``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rl_lightning import keys
from rl_lightning.callbacks import LogValidationReward
from rl_lightning.collector import Collector, evaluate
from rl_lightning.data import CALLBACK_SEEDS, VALIDATION_SEEDS, evaluation_seed
from rl_lightning.envs import make_vec_env
from tests.conftest import tiny_ppo_run

# CartPole-v1 terminates when |x| > 2.4 or |theta| > 12 degrees; it resets every state variable in ±0.05.
X_THRESHOLD = 2.4
THETA_THRESHOLD = 12 * 2 * np.pi / 360


def time_limit(steps: int) -> dict[str, Any]:
    return {"class_path": "gymnasium.wrappers.TimeLimit", "init_args": {"max_episode_steps": steps}}


def push_left(obs: torch.Tensor) -> dict[str, torch.Tensor]:
    """CartPole falls over in about 10 steps."""
    return {keys.ACTION: torch.zeros(len(obs), dtype=torch.int64)}


def balance(obs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Keeps CartPole up for well over 60 steps (pushes towards where the pole is falling)."""
    return {keys.ACTION: (obs[:, 2] + 0.5 * obs[:, 3] > 0).long()}


def no_torque(obs: torch.Tensor) -> dict[str, torch.Tensor]:
    return {keys.ACTION: torch.zeros(len(obs), 1)}


@pytest.fixture
def cartpole() -> Iterator[gym.vector.VectorEnv]:
    envs = make_vec_env("CartPole-v1", num_envs=3)
    yield envs
    envs.close()


def collect(collector: Collector, batches: int) -> TensorDict:
    """Several consecutive batches, joined along time."""
    return torch.cat([collector.collect() for _ in range(batches)], dim=1)


def test_batch_follows_the_data_contract(cartpole: gym.vector.VectorEnv) -> None:
    def policy(obs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**push_left(obs), keys.ACTION_LOG_PROB: torch.full((len(obs),), -0.5)}

    collector = Collector(cartpole, policy, steps_per_batch=16)
    collector.reset(seed=0)
    batch = collector.collect()

    assert batch.batch_size == (3, 16)
    expected = {
        keys.OBSERVATION: ((3, 16, 4), torch.float32),
        keys.ACTION: ((3, 16), torch.int64),
        keys.ACTION_LOG_PROB: ((3, 16), torch.float32),
        keys.DONE: ((3, 16, 1), torch.bool),
        keys.TERMINATED: ((3, 16, 1), torch.bool),
        keys.TRUNCATED: ((3, 16, 1), torch.bool),
        keys.IS_INIT: ((3, 16, 1), torch.bool),
        keys.NEXT_OBSERVATION: ((3, 16, 4), torch.float32),
        keys.NEXT_REWARD: ((3, 16, 1), torch.float32),
        keys.NEXT_DONE: ((3, 16, 1), torch.bool),
        keys.NEXT_TERMINATED: ((3, 16, 1), torch.bool),
        keys.NEXT_TRUNCATED: ((3, 16, 1), torch.bool),
        keys.NEXT_EPISODE_RETURN: ((3, 16, 1), torch.float32),
        keys.NEXT_EPISODE_LENGTH: ((3, 16, 1), torch.int64),
    }
    assert set(batch.keys(include_nested=True, leaves_only=True)) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape, key
        assert batch[key].dtype == dtype, key
    assert (batch[keys.ACTION_LOG_PROB] == -0.5).all()
    # The observation at t is never a final one: autoreset replaced it.
    assert not batch[keys.DONE].any() and not batch[keys.TERMINATED].any() and not batch[keys.TRUNCATED].any()
    assert (batch[keys.NEXT_REWARD] == 1.0).all()
    # Pushing left for 16 steps ends at least one episode in every env.
    assert batch[keys.NEXT_TERMINATED].any(dim=1).all()
    assert not batch[keys.NEXT_TRUNCATED].any()
    assert torch.equal(batch[keys.NEXT_DONE], batch[keys.NEXT_TERMINATED] | batch[keys.NEXT_TRUNCATED])
    # An episode starts at the reset and after every episode end; the next batch goes on from the last step.
    assert batch[keys.IS_INIT][:, 0].all()
    assert torch.equal(batch[keys.IS_INIT][:, 1:], batch[keys.NEXT_DONE][:, :-1])
    following = collector.collect()
    assert torch.equal(following[keys.IS_INIT][:, 0], batch[keys.NEXT_DONE][:, -1])
    collector.reset(seed=1)
    assert collector.collect()[keys.IS_INIT][:, 0].all()


def test_next_observation_is_the_next_observation_or_the_final_one(cartpole: gym.vector.VectorEnv) -> None:
    collector = Collector(cartpole, push_left, steps_per_batch=12)
    collector.reset(seed=1)
    batch = collect(collector, batches=3)  # joined, so the checks also run across batch boundaries
    obs, next_obs = batch[keys.OBSERVATION], batch[keys.NEXT_OBSERVATION]
    done = batch[keys.NEXT_DONE].squeeze(-1)[:, :-1]
    terminated = batch[keys.NEXT_TERMINATED].squeeze(-1)

    continuing = ~done
    assert continuing.any() and done.any()
    assert torch.equal(next_obs[:, :-1][continuing], obs[:, 1:][continuing])

    final = next_obs[terminated]
    outside = (final[:, 0].abs() > X_THRESHOLD) | (final[:, 2].abs() > THETA_THRESHOLD)
    assert outside.all(), f"final observations within CartPole's bounds: {final[~outside]}"
    reset = obs[:, 1:][done]
    assert (reset.abs() <= 0.05).all(), f"reset observations outside ±0.05: {reset}"
    assert not torch.equal(next_obs[:, :-1][done], reset)


def test_truncation_by_a_time_limit_wrapper() -> None:
    envs = make_vec_env("CartPole-v1", num_envs=2, wrappers=[time_limit(5)])
    collector = Collector(envs, balance, steps_per_batch=8)
    collector.reset(seed=0)
    batch = collect(collector, batches=2)
    envs.close()

    truncated = batch[keys.NEXT_TRUNCATED].squeeze(-1)
    expected = torch.zeros(2, 16, dtype=torch.bool)
    expected[:, [4, 9, 14]] = True  # every 5th step, also across the batch boundary
    assert torch.equal(truncated, expected)
    assert not batch[keys.NEXT_TERMINATED].any()
    assert torch.equal(batch[keys.NEXT_DONE].squeeze(-1), expected)
    assert (batch[keys.NEXT_EPISODE_LENGTH][expected] == 5).all()
    assert (batch[keys.NEXT_EPISODE_LENGTH][~expected] == 0).all()
    # The final observation of a truncated episode, not the reset one, is the next observation.
    final, reset = batch[keys.NEXT_OBSERVATION][:, [4, 9]], batch[keys.OBSERVATION][:, [5, 10]]
    assert (reset.abs() <= 0.05).all()
    assert (final - reset).abs().amax(-1).gt(0).all()


@pytest.mark.parametrize(
    ("env_id", "wrappers", "policy"),
    [
        ("CartPole-v1", None, push_left),  # terminations
        ("Pendulum-v1", [time_limit(7)], no_torque),  # truncations, rewards that differ per step
    ],
)
def test_episode_statistics_are_sums_over_the_episode(env_id: str, wrappers: Any, policy: Any) -> None:
    envs = make_vec_env(env_id, num_envs=2, wrappers=wrappers)
    collector = Collector(envs, policy, steps_per_batch=5)
    collector.reset(seed=0)
    steps_per_batch, batches = 5, 6
    batch = collect(collector, batches)
    envs.close()

    reward = batch[keys.NEXT_REWARD].squeeze(-1).double()
    done = batch[keys.NEXT_DONE].squeeze(-1)
    episode_return = batch[keys.NEXT_EPISODE_RETURN].squeeze(-1)
    episode_length = batch[keys.NEXT_EPISODE_LENGTH].squeeze(-1)
    spanning = 0
    for env in range(2):
        start = 0
        for t in torch.nonzero(done[env]).flatten().tolist():
            assert episode_length[env, t] == t + 1 - start
            assert episode_return[env, t].item() == pytest.approx(reward[env, start : t + 1].sum().item(), rel=1e-5)
            spanning += start // steps_per_batch != t // steps_per_batch
            start = t + 1
        assert start > 0, "no episode ended"
    assert spanning > 0, "no episode spanned two collect() calls"
    assert (episode_return[~done] == 0).all() and (episode_length[~done] == 0).all()


def test_same_seed_same_batches() -> None:
    def run(seed: int) -> TensorDict:
        envs = make_vec_env("CartPole-v1", num_envs=2)
        collector = Collector(envs, balance, steps_per_batch=10)
        collector.reset(seed=seed)
        batch = collect(collector, batches=2)
        envs.close()
        return batch

    first, second = run(3), run(3)
    assert (first == second).all()
    assert not torch.equal(first[keys.OBSERVATION], run(4)[keys.OBSERVATION])


@pytest.mark.parametrize(("num_envs", "num_episodes", "quota"), [(2, 4, [2, 2]), (2, 5, [3, 2]), (3, 4, [2, 1, 1])])
def test_evaluate_runs_a_quota_of_episodes_per_env(num_envs: int, num_episodes: int, quota: list[int]) -> None:
    # Env 0 falls over in about 10 steps, the others balance until the time limit of 30 steps: "the first
    # episodes to finish" would all come from env 0.
    envs = make_vec_env("CartPole-v1", num_envs=num_envs, wrappers=[time_limit(30)])

    def policy(obs: torch.Tensor) -> dict[str, torch.Tensor]:
        action = balance(obs)[keys.ACTION]
        action[0] = 0
        return {keys.ACTION: action}

    result = evaluate(envs, policy, num_episodes=num_episodes, seed=0)
    envs.close()

    assert result.batch_size == (num_episodes,)
    lengths = result[keys.EPISODE_LENGTH]
    assert lengths.dtype == torch.int64 and result[keys.EPISODE_RETURN].dtype == torch.float32
    assert int((lengths < 30).sum()) == quota[0]
    assert int((lengths == 30).sum()) == sum(quota[1:])
    torch.testing.assert_close(result[keys.EPISODE_RETURN], lengths.float())  # CartPole pays 1 per step


class RecordActions(gym.Wrapper):
    """Records every action the env receives (imported by the collector tests through a wrapper spec)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.actions: list[np.ndarray] = []

    def step(self, action: Any) -> Any:
        self.actions.append(np.array(action))
        return self.env.step(action)


def test_box_actions_are_clipped_for_the_env_only() -> None:
    def run(value: float) -> tuple[TensorDict, list[np.ndarray]]:
        envs = make_vec_env("Pendulum-v1", num_envs=2, wrappers=[f"{__name__}.RecordActions"])
        collector = Collector(envs, lambda obs: {keys.ACTION: torch.full((len(obs), 1), value)}, steps_per_batch=6)
        collector.reset(seed=0)
        batch = collector.collect()
        received = [a for env in envs.envs for a in env.actions]  # type: ignore[attr-defined]
        envs.close()
        return batch, received

    batch, received = run(100.0)
    assert len(received) == 12
    assert all(np.array_equal(action, [2.0]) for action in received)  # Pendulum's max torque
    assert (batch[keys.ACTION] == 100.0).all()
    assert torch.isfinite(batch[keys.NEXT_REWARD]).all()
    at_bound, _ = run(2.0)
    torch.testing.assert_close(batch[keys.NEXT_REWARD], at_bound[keys.NEXT_REWARD], rtol=0, atol=0)


def test_collector_needs_same_step_autoreset() -> None:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(ValueError, match=r"AutoresetMode\.SAME_STEP"):
        Collector(envs, push_left, steps_per_batch=4)
    envs.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_pin_memory_without_cuda_is_refused_with_the_fix() -> None:
    envs = make_vec_env("CartPole-v1", num_envs=2, seed=0)
    with pytest.raises(ValueError, match=r"pin_memory=True.*CUDA is not available.*Use pin_memory=False"):
        Collector(envs, lambda obs: {"action": torch.zeros(len(obs), dtype=torch.int64)}, 4, pin_memory=True)
    envs.close()


def _seeds(base: int, num_envs: int) -> set[int]:
    return set(range(base, base + num_envs))


def test_evaluation_seeds_do_not_overlap_between_rounds_ranks_and_streams() -> None:
    n = 10  # envs per evaluation
    first, second = evaluation_seed(0, rank=0, evaluation=1), evaluation_seed(0, rank=0, evaluation=2)
    assert not _seeds(first, n) & _seeds(second, n)  # consecutive rounds (they used to share n - 1 seeds)
    assert not _seeds(first, n) & _seeds(evaluation_seed(0, rank=1, evaluation=1), n)  # two ranks, same round
    # past 1000 rounds too (the old per-rank offset of 1000 made rank 1's round k rank 0's round k + 1000), and
    # apart from the training envs' seeds (seed + 1000 * rank + i)
    bases = sorted(
        evaluation_seed(0, rank, evaluation, stream)
        for rank in range(2)
        for evaluation in range(1, 1500)
        for stream in (VALIDATION_SEEDS, CALLBACK_SEEDS)
    )
    assert all(b - a >= n for a, b in itertools.pairwise(bases)) and bases[0] >= 2 * 1000
    assert all(0 <= base < 2**31 for base in bases)


def test_evaluation_seeds_are_deterministic() -> None:
    assert evaluation_seed(7, rank=1, evaluation=3) == evaluation_seed(7, rank=1, evaluation=3)
    assert evaluation_seed(7, rank=1, evaluation=3) != evaluation_seed(8, rank=1, evaluation=3)


class RecordResetSeeds(gym.Wrapper):
    """Records every seed an env is reset with, in this process (imported through a wrapper spec; sync envs)."""

    seeds: list[int] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            RecordResetSeeds.seeds.append(seed)
        return self.env.reset(seed=seed, options=options)


def test_a_fit_never_resets_two_envs_with_one_seed_and_the_same_seed_repeats_them(tmp_path: Path) -> None:
    def reset_seeds(run: str) -> list[int]:
        RecordResetSeeds.seeds = []
        evaluations = LogValidationReward(interval_frames=64, num_episodes=2, num_envs=2)
        data = {"wrappers": ["tests.test_collector.RecordResetSeeds"]}
        trainer, model, datamodule = tiny_ppo_run(tmp_path / run, data=data, callbacks=[evaluations])
        trainer.fit(model, datamodule=datamodule)
        return RecordResetSeeds.seeds

    seeds = reset_seeds("first")
    # 4 training envs, 2 validation rounds (every 2 of the 4 batches) and 4 LogValidationReward evaluations (every
    # batch), 2 envs each
    assert len(seeds) == 4 + 2 * 2 + 4 * 2
    assert len(set(seeds)) == len(seeds), sorted(seeds)
    assert reset_seeds("second") == seeds


def test_a_policy_returning_nan_stops_the_batch_with_a_message(cartpole: gym.vector.VectorEnv) -> None:
    """A categorical draw from NaN logits still picks an action (argmax treats NaN as largest): the collector
    checks the policy's outputs once a batch instead."""

    def nan_policy(obs: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(obs)
        return {keys.ACTION: torch.zeros(n, dtype=torch.int64), keys.ACTION_LOG_PROB: torch.full((n,), torch.nan)}

    collector = Collector(cartpole, nan_policy, steps_per_batch=4, env_id="CartPole-v1")
    with pytest.raises(FloatingPointError, match=r"NaN or inf 'action_log_prob'.*frames 0 to .* of CartPole-v1"):
        collector.collect()

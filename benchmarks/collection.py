"""Collection throughput: ``Collector`` against a plain loop, over ``num_envs`` and sync/async vectorization.

Part 1 steps CartPole-v1 vector envs with a PPO policy (64x64 MLP, one call per step for all envs) through
``rl_lightning.collector.Collector`` and through a plain loop doing the same work (the same vector env and
policy; observations, actions and rewards kept in lists and stacked at the end), for ``num_envs`` 1 to 32,
sync and async. It prints frames/s and the ratio rl_lightning / plain.

Part 2 checks the issue's target, async vectorization beats sync on an env whose step costs more than 1 ms:
``BusySteps`` makes each step of CartPole burn ``--busy-ms`` of CPU (real work, not a sleep), and the
Collector's frames/s with async envs is compared with sync ones for the same ``num_envs``.

    .venv/bin/python benchmarks/collection.py
    .venv/bin/python benchmarks/collection.py --num-envs 1 8 --frames 4096 --busy-ms 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch

from rl_lightning import PPO
from rl_lightning.collector import Collector
from rl_lightning.envs import Vectorization, make_vec_env


class BusySteps(gym.Wrapper):
    """Makes every step cost ``ms`` milliseconds of CPU work (a simulator's cost, not a sleep)."""

    def __init__(self, env: gym.Env, ms: float = 1.5) -> None:
        super().__init__(env)
        self.seconds = ms / 1000

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        end = time.perf_counter() + self.seconds
        x = 1.0
        while time.perf_counter() < end:
            x = (x * 1.000001) % 7.0
        return self.env.step(action)


def plain_collect(envs: gym.vector.VectorEnv, policy: Any, steps: int, obs: np.ndarray) -> tuple[Any, np.ndarray]:
    """The reference: step, call the policy, keep everything in lists, stack once at the end."""
    observations, actions, log_probs, rewards, dones, next_obs = [], [], [], [], [], []
    for _ in range(steps):
        o = torch.from_numpy(obs)
        with torch.inference_mode():
            out = policy(o)
        obs, reward, terminated, truncated, info = envs.step(out["action"].numpy())
        done = terminated | truncated
        final = obs.copy()
        if done.any():
            final[done] = np.stack([info["final_obs"][i] for i in np.flatnonzero(done)])
        observations.append(o)
        actions.append(out["action"])
        log_probs.append(out["action_log_prob"])
        rewards.append(torch.from_numpy(reward))
        dones.append(torch.from_numpy(done))
        next_obs.append(torch.from_numpy(final))
    batch = [torch.stack(x, dim=1) for x in (observations, actions, log_probs, rewards, dones, next_obs)]
    return batch, obs


def frames_per_second(
    side: str, num_envs: int, vectorization: Vectorization, frames: int, policy: Any, wrappers: list[Any]
) -> float:
    envs = make_vec_env("CartPole-v1", num_envs, wrappers=wrappers, vectorization=vectorization, seed=0)
    steps = max(frames // num_envs // 4, 1)  # 4 batches
    try:
        if side == "rl_lightning":
            collector = Collector(envs, policy, steps)
            collector.reset(seed=0)
            collector.collect()  # warm-up batch
            start = time.perf_counter()
            for _ in range(4):
                collector.collect()
        else:
            obs, _ = envs.reset(seed=0)
            _, obs = plain_collect(envs, policy, steps, obs)
            start = time.perf_counter()
            for _ in range(4):
                _, obs = plain_collect(envs, policy, steps, obs)
        return 4 * steps * num_envs / (time.perf_counter() - start)
    finally:
        envs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--frames", type=int, default=8192, help="frames per timing (4 batches)")
    parser.add_argument("--rounds", type=int, default=3, help="timings per cell, alternating sides; the median counts")
    parser.add_argument("--busy-ms", type=float, default=1.5, help="CPU cost of one step of the slow env (part 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    model = PPO(obs_space, gym.spaces.Discrete(2), hidden_sizes=[64, 64])
    policy = model.act
    print(f"CartPole-v1, PPO policy 64x64, torch={torch.__version__}, threads={args.threads}, frames={args.frames}")

    print("\nPart 1: frames/s, Collector against the plain loop (median of rounds)")
    print(f"  {'vectorization':<13} {'num_envs':>8} {'plain':>10} {'rl_lightning':>13} {'ratio':>6}")
    for vectorization in ("sync", "async"):
        for num_envs in args.num_envs:
            timings: dict[str, list[float]] = {"plain": [], "rl_lightning": []}
            for _ in range(args.rounds):
                for side in timings:
                    timings[side].append(frames_per_second(side, num_envs, vectorization, args.frames, policy, []))
            plain, ours = (statistics.median(timings[s]) for s in ("plain", "rl_lightning"))
            print(f"  {vectorization:<13} {num_envs:>8} {plain:>10,.0f} {ours:>13,.0f} {ours / plain:>5.2f}x")

    print(f"\nPart 2: an env whose step burns {args.busy_ms} ms of CPU; Collector frames/s, async against sync")
    busy = [{"class_path": "__main__.BusySteps", "init_args": {"ms": args.busy_ms}}]
    frames = max(args.frames // 16, 64)
    for num_envs in (2, 4):
        fps = {
            v: statistics.median(
                frames_per_second("rl_lightning", num_envs, v, frames, policy, busy) for _ in range(args.rounds)
            )
            for v in ("sync", "async")
        }
        ratio = fps["async"] / fps["sync"]
        verdict = "ok" if ratio > 1 else "MISSED"
        print(f"  num_envs={num_envs}: sync {fps['sync']:,.0f}  async {fps['async']:,.0f}  ", end="")
        print(f"async/sync {ratio:.2f}x  (target > 1x: {verdict})")


if __name__ == "__main__":
    main()

"""Collection throughput of gymnasium ``sync``, gymnasium ``async`` and EnvPool, with a policy in the loop.

Each row steps 8 envs through ``rl_lightning.collector.Collector`` (what training does: a policy call per step for
all envs under ``torch.inference_mode``, observations written into the batch) and reports frames/s. Two envs:

- **Pong**, standard preprocessing on both sides: gymnasium ``ALE/Pong-v5`` with ``frameskip=1`` +
  ``AtariPreprocessing(frame_skip=4, screen_size=84, grayscale_obs=True)`` + ``FrameStackObservation(4)``, in a
  ``SyncVectorEnv`` or an ``AsyncVectorEnv`` (one subprocess per env); EnvPool's ``Pong-v5`` (the same
  preprocessing in C++, see ``rl_lightning/envpool.py``) through ``make_envpool_vec_env``. The policy is the Nature
  DQN CNN (conv 32 8x8/4, 64 4x4/2, 64 3x3/1, linear 512, 6 actions) on the uint8 ``[8, 4, 84, 84]`` batch scaled to
  [0, 1], sampling from its logits.
- **CartPole-v1**: ``make_vec_env`` sync and async against ``make_envpool_vec_env``; the policy is a 64x64 tanh MLP.

Each env is also run with random actions (``torch.randint``, no network) for reference. Frames are agent steps times
the frame skip (4 for Pong, 1 for CartPole), the project's frame count; steps/s is printed too. The ratio column is
frames/s against gymnasium async for the same env and policy. Every cell is the median of ``--rounds`` timings, the
vectorizations taking turns within a round, and the best of them (on a machine shared with other work the best
timing is the one least slowed by it); envs are built once, and each timing follows an untimed warm-up batch.
torch runs one thread (``torch.set_num_threads(1)``). The load average is printed at the start and the end.

    .venv/bin/python benchmarks/vectorization.py
    .venv/bin/python benchmarks/vectorization.py --only pong --rounds 9 --seconds 1 --envpool-threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version

import ale_py
import gymnasium as gym
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
from torch import nn

from rl_lightning.collector import Collector, Policy
from rl_lightning.envpool import make_envpool_vec_env
from rl_lightning.envs import make_vec_env

NUM_ENVS = 8
VECTORIZATIONS = ("gymnasium sync", "gymnasium async", "EnvPool")


def make_pong() -> gym.Env:
    """One gymnasium Pong env with the standard preprocessing (84x84 grayscale, frame skip 4, 4 frames stacked)."""
    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=1)
    env = AtariPreprocessing(env, frame_skip=4, screen_size=84, grayscale_obs=True)
    return FrameStackObservation(env, stack_size=4)


def pong_envs(vectorization: str, envpool_threads: int) -> gym.vector.VectorEnv:
    if vectorization == "EnvPool":
        return make_envpool_vec_env("ALE/Pong-v5", NUM_ENVS, seed=0, env_kwargs={"num_threads": envpool_threads})
    cls = gym.vector.SyncVectorEnv if vectorization == "gymnasium sync" else gym.vector.AsyncVectorEnv
    return cls([make_pong] * NUM_ENVS, autoreset_mode=AutoresetMode.SAME_STEP)


def cartpole_envs(vectorization: str, envpool_threads: int) -> gym.vector.VectorEnv:
    if vectorization == "EnvPool":
        return make_envpool_vec_env("CartPole-v1", NUM_ENVS, seed=0, env_kwargs={"num_threads": envpool_threads})
    return make_vec_env("CartPole-v1", NUM_ENVS, vectorization="sync" if vectorization == "gymnasium sync" else "async")


class NatureCNN(nn.Module):
    """The Nature DQN network: uint8 ``[N, 4, 84, 84]`` frames to ``n`` logits."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512),
            nn.ReLU(),
            nn.Linear(512, n),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float() / 255.0)


def sampling_policy(net: nn.Module) -> Policy:
    """Samples actions from the logits of ``net`` and returns their log-probs, as an on-policy collector does."""

    def policy(obs: torch.Tensor) -> dict[str, torch.Tensor]:
        dist = torch.distributions.Categorical(logits=net(obs))
        action = dist.sample()
        return {"action": action, "action_log_prob": dist.log_prob(action)}

    return policy


def random_policy(n: int) -> Policy:
    return lambda obs: {"action": torch.randint(n, (obs.shape[0],))}


def time_batches(collector: Collector, seconds: float) -> float:
    """Steps/s over whole batches until ``seconds`` have passed (at least one batch), after a warm-up batch."""
    collector.collect()
    frames, start = 0, time.perf_counter()
    while True:
        collector.collect()
        frames += collector.num_envs * collector.steps_per_batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return frames / elapsed


def measure(
    title: str,
    make: Callable[[str, int], gym.vector.VectorEnv],
    policies: dict[str, Policy],
    frame_skip: int,
    steps_per_batch: int,
    args: argparse.Namespace,
) -> None:
    envs = {v: make(v, args.envpool_threads) for v in VECTORIZATIONS}
    timings: dict[tuple[str, str], list[float]] = {(p, v): [] for p in policies for v in VECTORIZATIONS}
    try:
        for name, policy in policies.items():
            collectors = {v: Collector(e, policy, steps_per_batch) for v, e in envs.items()}
            for collector in collectors.values():
                collector.reset(seed=0)
            for k in range(args.rounds):
                order = VECTORIZATIONS[k % 3 :] + VECTORIZATIONS[: k % 3]
                for v in order:
                    timings[name, v].append(time_batches(collectors[v], args.seconds))
    finally:
        for e in envs.values():
            e.close()
    print(f"\n{title}: {NUM_ENVS} envs, {steps_per_batch} steps a batch, {args.rounds} rounds")
    head = f"  {'policy':<14} {'vectorization':<16} {'steps/s':>9} {'frames/s':>9} {'against async':>14}"
    print(f"{head} {'best frames/s':>14} {'best against async':>19}")
    for name in policies:
        async_runs = timings[name, "gymnasium async"]
        for v in VECTORIZATIONS:
            steps, best = statistics.median(timings[name, v]), max(timings[name, v])
            label = f"EnvPool, {args.envpool_threads} thr" if v == "EnvPool" else v
            line = f"  {name:<14} {label:<16} {steps:>9,.0f} {steps * frame_skip:>9,.0f}"
            line += f" {steps / statistics.median(async_runs):>13.2f}x {best * frame_skip:>14,.0f}"
            print(f"{line} {best / max(async_runs):>18.2f}x")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "gymnasium", "ale-py", "envpool"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, load average {load}, Python {platform.python_version()}, {versions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timings per cell (median and best)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one timing")
    parser.add_argument("--envpool-threads", type=int, default=2, help="EnvPool's num_threads")
    parser.add_argument("--only", choices=("pong", "cartpole"), default=None, help="run one env only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # gymnasium's Box precision warnings for EnvPool's spaces
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(machine())
    if args.only in (None, "pong"):
        cnn = NatureCNN(6).eval()
        policies = {"Nature CNN": sampling_policy(cnn), "random": random_policy(6)}
        measure("Pong (84x84 grayscale, frame skip 4, stack 4)", pong_envs, policies, 4, 32, args)
    if args.only in (None, "cartpole"):
        mlp = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)).eval()
        policies = {"MLP 64x64": sampling_policy(mlp), "random": random_policy(2)}
        measure("CartPole-v1", cartpole_envs, policies, 1, 128, args)
    print(f"\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; torch threads 1")


if __name__ == "__main__":
    main()

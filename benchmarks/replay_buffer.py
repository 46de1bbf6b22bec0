"""Replay-buffer throughput: ``ReplayBuffer`` (uniform, prioritized) against a plain preallocated-tensor ring.

Pendulum-like transitions (observation: 3 floats, action: 1 float), a full buffer of 1,000,000 transitions,
batches of 256. Prints microseconds per ``extend`` and per ``sample`` call and the ratios to the targets:
uniform sampling within 1.5x of the plain ring, prioritized sampling (``sample`` alone, and ``sample`` +
``update_priority``) within 3x of uniform. See benchmarks/README.md.

    .venv/bin/python benchmarks/replay_buffer.py
    .venv/bin/python benchmarks/replay_buffer.py --capacity 100000 --rounds 3 --storage memmap
    .venv/bin/python benchmarks/replay_buffer.py --sum-tree torch    # the fallback without the C extension
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict

from rl_lightning import keys, replay
from rl_lightning.replay import ReplayBuffer, _SumTree

OBS_DIM, ACT_DIM = 3, 1


def pendulum_batch(num_envs: int, steps: int, generator: torch.Generator) -> TensorDict:
    """A collector-shaped batch ``[num_envs, steps]`` of Pendulum-like transitions (episodes of 200 steps)."""
    done = torch.zeros(num_envs, steps, 1, dtype=torch.bool)
    done[:, 199::200] = True
    return TensorDict(
        {
            keys.OBSERVATION: torch.randn(num_envs, steps, OBS_DIM, generator=generator),
            keys.ACTION: torch.randn(num_envs, steps, ACT_DIM, generator=generator),
            keys.ACTION_LOG_PROB: torch.randn(num_envs, steps, generator=generator),
            keys.NEXT: {
                keys.OBSERVATION: torch.randn(num_envs, steps, OBS_DIM, generator=generator),
                keys.REWARD: torch.randn(num_envs, steps, 1, generator=generator),
                keys.TERMINATED: torch.zeros(num_envs, steps, 1, dtype=torch.bool),
                keys.TRUNCATED: done.clone(),
                keys.DONE: done,
            },
        },
        batch_size=[num_envs, steps],
    )


class PlainRing:
    """The baseline: a dict of preallocated tensors, slice writes, ``torch.randint`` indices."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data = {
            "observation": torch.empty(capacity, OBS_DIM),
            "action": torch.empty(capacity, ACT_DIM),
            "next_observation": torch.empty(capacity, OBS_DIM),
            "reward": torch.empty(capacity, 1),
            "terminated": torch.empty(capacity, 1, dtype=torch.bool),
            "truncated": torch.empty(capacity, 1, dtype=torch.bool),
            "done": torch.empty(capacity, 1, dtype=torch.bool),
        }
        self.cursor = 0
        self.size = 0

    def extend(self, batch: TensorDict) -> None:
        flat = batch.reshape(-1)
        values = {
            "observation": flat[keys.OBSERVATION],
            "action": flat[keys.ACTION],
            "next_observation": flat[keys.NEXT_OBSERVATION],
            "reward": flat[keys.NEXT_REWARD],
            "terminated": flat[keys.NEXT_TERMINATED],
            "truncated": flat[keys.NEXT_TRUNCATED],
            "done": flat[keys.NEXT_DONE],
        }
        count = flat.numel()
        first = min(count, self.capacity - self.cursor)
        for name, value in values.items():
            self.data[name][self.cursor : self.cursor + first] = value[:first]
            self.data[name][: count - first] = value[first:]
        self.cursor = (self.cursor + count) % self.capacity
        self.size = min(self.size + count, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(self.size, (batch_size,), generator=generator)
        return {name: value.index_select(0, index) for name, value in self.data.items()}


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(min(100, calls)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=2000, help="sample calls per timing")
    parser.add_argument("--rounds", type=int, default=5, help="timings per variant, interleaved; the median counts")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--storage", choices=["memory", "memmap"], default="memory")
    parser.add_argument(
        "--sum-tree",
        choices=["compiled", "torch"],
        default="compiled" if replay._compiled is not None else "torch",
        help="the prioritized buffer's sum tree: the C extension (default when built) or the torch fallback",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    scratch = tempfile.TemporaryDirectory(prefix="replay-bench-")
    print(
        f"capacity={args.capacity:,} batch_size={args.batch_size} storage={args.storage} threads={args.threads} "
        f"torch={torch.__version__} obs={OBS_DIM} action={ACT_DIM} sum_tree={args.sum_tree}"
    )

    def make(prioritized: bool) -> ReplayBuffer:
        directory = f"{scratch.name}/{'prioritized' if prioritized else 'uniform'}"
        buffer = ReplayBuffer(args.capacity, storage=args.storage, scratch_dir=directory, prioritized=prioritized)
        if prioritized:  # empty yet: a tree of the chosen backend takes the place of the default one
            buffer._tree = _SumTree(args.capacity, backend=args.sum_tree)
        return buffer

    buffers: dict[str, ReplayBuffer | PlainRing] = {
        "plain ring": PlainRing(args.capacity),
        "ReplayBuffer uniform": make(prioritized=False),
        "ReplayBuffer prioritized": make(prioritized=True),
    }

    # extend: a collector batch of 16 envs x 64 steps (1024 transitions), then fill the buffer to capacity.
    small = pendulum_batch(16, 64, generator)
    extend_us = {name: per_call_us(functools.partial(buffer.extend, small), 200) for name, buffer in buffers.items()}
    chunk = pendulum_batch(10, 10_000, generator)
    fill_s = {}
    for name, buffer in buffers.items():
        start = time.perf_counter()
        for _ in range(-(-args.capacity // chunk.numel())):
            buffer.extend(chunk)
        fill_s[name] = time.perf_counter() - start
    print("\nextend (16 envs x 64 steps = 1024 transitions per call; fill = capacity in [10, 10000] batches)")
    for name in buffers:
        rate = 1024 / extend_us[name] * 1e6
        print(f"  {name:<26} {extend_us[name]:9.1f} us/call  {rate / 1e6:6.2f} M transitions/s  ", end="")
        print(f"fill {fill_s[name]:.2f} s")

    plain = buffers["plain ring"]
    uniform = buffers["ReplayBuffer uniform"]
    prioritized = buffers["ReplayBuffer prioritized"]
    assert isinstance(plain, PlainRing) and isinstance(uniform, ReplayBuffer) and isinstance(prioritized, ReplayBuffer)
    assert len(uniform) == len(prioritized) == plain.size == args.capacity
    td_error = torch.rand(args.batch_size, 1, generator=generator)
    batch_size = args.batch_size

    def prioritized_step() -> None:
        sample = prioritized.sample(batch_size, generator=generator)
        prioritized.update_priority(sample["index"], td_error)

    variants: dict[str, Callable[[], object]] = {
        "plain ring": lambda: plain.sample(batch_size, generator),
        "uniform": lambda: uniform.sample(batch_size, generator=generator),
        "prioritized sample": lambda: prioritized.sample(batch_size, generator=generator),
        "prioritized sample+update": prioritized_step,
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            timings[name].append(per_call_us(fn, args.calls))
    us = {name: statistics.median(values) for name, values in timings.items()}
    print(f"\nsample (batch {batch_size}, full buffer; median of {args.rounds} rounds of {args.calls} calls)")
    for name, value in us.items():
        spread = f"min {min(timings[name]):.1f} max {max(timings[name]):.1f}"
        print(f"  {name:<26} {value:9.1f} us/call  ({spread})")
    uniform_ratio = us["uniform"] / us["plain ring"]
    prioritized_ratio = us["prioritized sample+update"] / us["uniform"]
    print("\nratios")
    print(f"  uniform / plain ring                    {uniform_ratio:5.2f}x  (target <= 1.5x: ", end="")
    print(f"{_ok(uniform_ratio <= 1.5)})")
    print(f"  prioritized (sample+update) / uniform   {prioritized_ratio:5.2f}x  (target <= 3x: ", end="")
    print(f"{_ok(prioritized_ratio <= 3)})")
    sample_ratio = us["prioritized sample"] / us["uniform"]
    print(f"  prioritized sample only / uniform       {sample_ratio:5.2f}x  (target <= 3x: {_ok(sample_ratio <= 3)})")
    scratch.cleanup()


def _ok(passed: bool) -> str:
    return "ok" if passed else "MISSED"


if __name__ == "__main__":
    main()

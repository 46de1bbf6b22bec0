"""Replay memory for pixels: ``ReplayBuffer`` against a plain uint8 ring that stores observation and next observation.

A buffer of 100,000 transitions of Atari-sized observations (``[4, 84, 84]`` uint8 frame stacks, as gymnasium's
``AtariPreprocessing`` + ``FrameStackObservation`` give them; 28,224 bytes each), filled with collector-shaped
batches ``[8 envs, 16 steps]`` whose stacks slide one frame a step, in episodes of 200 to 600 steps (the final
observation of an episode is not the next episode's reset one). ``ReplayBuffer`` stores these as single frames; the
``whole`` variant reverses each stack (newest frame first: the same bytes, but stacks that do not slide), so that
it stores whole observations, each once. Each variant runs in a fresh subprocess, which reports its resident memory
growth from before the buffer is built to after it is full (anonymous and file-backed pages), bytes per transition,
and the time of a uniform ``sample(32)``. Prints the ratios to the plain ring and the issue's targets (at most 3 GB
for the 100,000-transition buffer; 1 GB with single frames), then times ``sample(32)`` of the ring and of both
layouts in alternating rounds in one process (smaller buffers: all three fit at once). See benchmarks/README.md.

    .venv/bin/python benchmarks/replay_memory.py
    .venv/bin/python benchmarks/replay_memory.py --capacity 20000 --variants ring memory
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from tensordict import TensorDict

from rl_lightning import keys
from rl_lightning.replay import ReplayBuffer

SHAPE = (4, 84, 84)
VARIANTS = {
    "ring": "plain uint8 ring (observation + next observation)",
    "memory": "ReplayBuffer, storage='memory'",
    "memmap": "ReplayBuffer, storage='memmap'",
    "whole": "ReplayBuffer, memory, stacks newest frame first",
}


def atari_batches(num_envs: int, steps: int, seed: int, newest_first: bool = False) -> Iterator[TensorDict]:
    """Endless collector batches ``[num_envs, steps]`` of frame stacks: each step pushes one new random 84x84 frame
    into its env's stack of 4; an episode (200 to 600 steps) ends terminated with its own final stack, and the next one
    starts from a stack of 4 copies of its first frame (FrameStackObservation's padding). ``newest_first`` reverses
    each stack: the same bytes, but no longer a stack that slides (ReplayBuffer then stores whole observations)."""
    generator = torch.Generator().manual_seed(seed)
    stacks = [torch.randint(0, 256, SHAPE, dtype=torch.uint8, generator=generator) for _ in range(num_envs)]
    left = [int(torch.randint(200, 601, (), generator=generator)) for _ in range(num_envs)]
    resets_per_batch = steps // 200 + 1  # episodes last 200 steps or more
    while True:
        obs = torch.empty(num_envs, steps, *SHAPE, dtype=torch.uint8)
        nxt = torch.empty_like(obs)
        done = torch.zeros(num_envs, steps, 1, dtype=torch.bool)
        for env in range(num_envs):
            # The env's frames: its current stack (0-3), the batch's new frames (4 to 3 + steps), then the first frames
            # of the episodes that start in the batch; the stacks are rows of indices into them.
            new = torch.randint(0, 256, (steps + resets_per_batch, *SHAPE[1:]), dtype=torch.uint8, generator=generator)
            frames = torch.cat([stacks[env], new])
            current, resets = [0, 1, 2, 3], 0
            obs_rows, next_rows = [], []
            for t in range(steps):
                obs_rows.append(current)
                current = [*current[1:], 4 + t]
                next_rows.append(current)
                left[env] -= 1
                if left[env] == 0:
                    done[env, t] = True
                    current = [4 + steps + resets] * 4
                    resets += 1
                    left[env] = int(torch.randint(200, 601, (), generator=generator))
            if newest_first:
                obs_rows, next_rows = [row[::-1] for row in obs_rows], [row[::-1] for row in next_rows]
            obs[env] = frames[torch.tensor(obs_rows)]
            nxt[env] = frames[torch.tensor(next_rows)]
            stacks[env] = frames[torch.tensor(current)]
        yield TensorDict(
            {
                keys.OBSERVATION: obs,
                keys.ACTION: torch.randint(0, 6, (num_envs, steps), generator=generator),
                keys.NEXT: {
                    keys.OBSERVATION: nxt,
                    keys.REWARD: torch.randn(num_envs, steps, 1, generator=generator),
                    keys.TERMINATED: done,
                    keys.TRUNCATED: torch.zeros_like(done),
                    keys.DONE: done.clone(),
                },
            },
            batch_size=[num_envs, steps],
        )


class PlainRing:
    """The naive reference: preallocated uint8 tensors for observation and next observation, slice writes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.observation = torch.empty(capacity, *SHAPE, dtype=torch.uint8)
        self.next_observation = torch.empty(capacity, *SHAPE, dtype=torch.uint8)
        self.action = torch.empty(capacity, dtype=torch.int64)
        self.reward = torch.empty(capacity, 1)
        self.terminated = torch.empty(capacity, 1, dtype=torch.bool)
        self.truncated = torch.empty(capacity, 1, dtype=torch.bool)
        self.cursor = 0
        self.size = 0

    def extend(self, batch: TensorDict) -> None:
        flat = batch.reshape(-1)
        count = flat.numel()
        first = min(count, self.capacity - self.cursor)
        for name, value in (
            ("observation", flat[keys.OBSERVATION]),
            ("next_observation", flat[keys.NEXT_OBSERVATION]),
            ("action", flat[keys.ACTION]),
            ("reward", flat[keys.NEXT_REWARD]),
            ("terminated", flat[keys.NEXT_TERMINATED]),
            ("truncated", flat[keys.NEXT_TRUNCATED]),
        ):
            stored = getattr(self, name)
            stored[self.cursor : self.cursor + first] = value[:first]
            stored[: count - first] = value[first:]
        self.cursor = (self.cursor + count) % self.capacity
        self.size = min(self.size + count, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(self.size, (batch_size,), generator=generator)
        names = ("observation", "next_observation", "action", "reward", "terminated", "truncated")
        return {name: getattr(self, name).index_select(0, index) for name in names}


def memory_kib() -> dict[str, int]:
    """This process's resident memory from /proc/self/status, in KiB: anonymous and file-backed pages."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) for name in ("RssAnon", "RssFile", "VmHWM")}


def per_call_us(fn: Callable[[], object], calls: int, rounds: int) -> tuple[float, float]:
    """The median and the fastest of ``rounds`` timings of ``calls`` calls, in microseconds per call."""
    for _ in range(min(100, calls)):
        fn()
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        timings.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(timings), min(timings)


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    """Fills one buffer in this process and measures it."""
    torch.set_num_threads(args.threads)
    batches = atari_batches(args.envs, args.steps, seed=0, newest_first=args.variant == "whole")
    next(batches)  # the generator's own memory is in the baseline
    gc.collect()
    before = memory_kib()
    scratch = tempfile.TemporaryDirectory(prefix="replay-memory-")
    buffer: PlainRing | ReplayBuffer
    if args.variant == "ring":
        buffer = PlainRing(args.capacity)
    else:
        storage: Literal["memory", "memmap"] = "memmap" if args.variant == "memmap" else "memory"
        buffer = ReplayBuffer(args.capacity, storage=storage, scratch_dir=scratch.name)
    start = time.perf_counter()
    filled = 0
    while filled < args.capacity:
        batch = next(batches)
        buffer.extend(batch)
        filled += batch.numel()
    fill_s = time.perf_counter() - start
    gc.collect()
    after = memory_kib()
    generator = torch.Generator().manual_seed(0)
    if isinstance(buffer, PlainRing):
        sample_us, fastest_us = per_call_us(lambda: buffer.sample(args.batch_size, generator), args.calls, args.rounds)
    else:
        sample = buffer.sample
        sample_us, fastest_us = per_call_us(
            lambda: sample(args.batch_size, generator=generator), args.calls, args.rounds
        )
    result = {
        "anon_bytes": (after["RssAnon"] - before["RssAnon"]) * 1024.0,
        "file_bytes": (after["RssFile"] - before["RssFile"]) * 1024.0,
        "peak_bytes": (after["VmHWM"] - before["VmHWM"]) * 1024.0,
        "fill_s": fill_s,
        "sample_us": sample_us,
        "fastest_us": fastest_us,
        "filled": float(filled),
    }
    if isinstance(buffer, ReplayBuffer):
        result["pool_slots"] = float(buffer._pool_used)
        result["single_frames"] = float(buffer._stack_axis is not None)
    scratch.cleanup()
    return result


def interleaved_sampling(args: argparse.Namespace) -> None:
    """Times ``sample(32)`` of the ring and of both ReplayBuffer layouts in one process, in alternating rounds (the
    fairest comparison on a busy machine), on buffers of ``--interleaved-capacity`` transitions."""
    torch.set_num_threads(args.threads)
    capacity = args.interleaved_capacity
    ring, frames, whole = PlainRing(capacity), ReplayBuffer(capacity), ReplayBuffer(capacity)
    for buffer, newest_first in ((ring, False), (frames, False), (whole, True)):
        batches, filled = atari_batches(args.envs, args.steps, seed=0, newest_first=newest_first), 0
        while filled < capacity:
            batch = next(batches)
            buffer.extend(batch)
            filled += batch.numel()
    assert frames._stack_axis is not None and whole._stack_axis is None
    generator = torch.Generator().manual_seed(0)
    calls: dict[str, Callable[[], object]] = {
        "plain uint8 ring": lambda: ring.sample(args.batch_size, generator),
        "ReplayBuffer, single frames": lambda: frames.sample(args.batch_size, generator=generator),
        "ReplayBuffer, whole observations": lambda: whole.sample(args.batch_size, generator=generator),
    }
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(30):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(100):
                fn()
            timings[name].append((time.perf_counter() - start) / 100 * 1e6)
    ring_median = statistics.median(timings["plain uint8 ring"])
    ring_fastest = min(timings["plain uint8 ring"])
    print(f"\nsample({args.batch_size}) interleaved in one process ({capacity:,} transitions, 30 rounds of 100 calls)")
    for name, values in timings.items():
        median, fastest = statistics.median(values), min(values)
        print(
            f"  {name:<34} median {median:6.1f} us ({median / ring_median:4.2f}x)  "
            f"fastest {fastest:6.1f} us ({fastest / ring_fastest:4.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16, help="steps per env in a collector batch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calls", type=int, default=2000, help="sample calls per timing")
    parser.add_argument("--rounds", type=int, default=5, help="timings per variant; the median counts")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--interleaved-capacity", type=int, default=30_000, help="buffers of the in-process sample timing (0: skip)"
    )
    parser.add_argument("--variant", choices=[*VARIANTS, "interleaved"], help=argparse.SUPPRESS)  # a subprocess's
    args = parser.parse_args()
    if args.variant == "interleaved":
        interleaved_sampling(args)
        return
    if args.variant is not None:
        print(json.dumps(run_variant(args)))
        return

    observation_bytes = torch.Size(SHAPE).numel()
    print(
        f"capacity={args.capacity:,} observation={list(SHAPE)} uint8 ({observation_bytes:,} bytes) "
        f"batches=[{args.envs} envs, {args.steps} steps] sample batch={args.batch_size} threads={args.threads} "
        f"torch={torch.__version__}"
    )
    results: dict[str, dict[str, float]] = {}
    for variant in args.variants:
        command = [sys.executable, __file__, "--variant", variant]
        for name in ("capacity", "envs", "steps", "batch_size", "calls", "rounds", "threads"):
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])

    print(
        f"\n  {'variant':<50} {'RSS growth':>10} {'of it file':>10} {'bytes/transition':>16} "
        f"{'sample(32) median':>17} {'fastest':>8}  fill"
    )
    for variant, result in results.items():
        resident = result["anon_bytes"] + result["file_bytes"]
        print(
            f"  {VARIANTS[variant]:<50} {resident / 1e9:7.2f} GB {result['file_bytes'] / 1e9:7.2f} GB "
            f"{resident / args.capacity:16,.0f} {result['sample_us']:14.1f} us {result['fastest_us']:5.1f} us  "
            f"{result['fill_s']:.1f} s"
        )
    if "ring" in results:
        ring = results["ring"]
        ring_bytes = ring["anon_bytes"] + ring["file_bytes"]
        print("\nratios to the plain ring")
        for variant, result in results.items():
            if variant == "ring":
                continue
            resident = result["anon_bytes"] + result["file_bytes"]
            print(
                f"  {VARIANTS[variant]:<50} memory {resident / ring_bytes:5.2f}x  "
                f"sample {result['sample_us'] / ring['sample_us']:5.2f}x (median), "
                f"{result['fastest_us'] / ring['fastest_us']:5.2f}x (fastest)"
            )
    for variant in ("memory", "memmap", "whole"):
        if variant in results:
            result = results[variant]
            target = (1e9 if result["single_frames"] else 3e9) * args.capacity / 100_000
            resident = result["anon_bytes"] + result["file_bytes"]
            verdict = "ok" if resident <= target else "MISSED"
            print(f"  target {VARIANTS[variant]}: <= {target / 1e9:.1f} GB: {resident / 1e9:.2f} GB ({verdict})")
    if args.interleaved_capacity:
        command = [sys.executable, __file__, "--variant", "interleaved"]
        for name in ("interleaved_capacity", "envs", "steps", "batch_size", "threads"):
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        print(subprocess.run(command, check=True, capture_output=True, text=True).stdout, end="")


if __name__ == "__main__":
    main()

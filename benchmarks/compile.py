"""The effect of ``compile: true`` (``torch.compile`` of the MLPs): PPO and SAC throughput, compiled against eager.

Each algorithm runs its config (``configs/ppo.yaml``, ``configs/sac.yaml``) through ``build`` + ``trainer.fit``
with evaluation off, eager and compiled, in one process: a short untimed warm-up fit of each first (imports;
for the compiled side the compilation, reported separately), then timed fits taking turns. Prints frames/s and
the ratio compiled / eager (above 1: compiling helps).

    .venv/bin/python benchmarks/compile.py
    .venv/bin/python benchmarks/compile.py --ppo-frames 50000 --sac-frames 4000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _harness import ROOT, fit_rl_lightning, quiet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ppo-frames", type=int, default=30_000)
    parser.add_argument("--sac-frames", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=2, help="timed fits per side, alternating; the median counts")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    print(f"torch={torch.__version__}, threads={args.threads}; frames/s with evaluation off (median of {args.rounds})")
    for name, frames, extra in (
        ("ppo", args.ppo_frames, []),
        ("sac", args.sac_frames, ["--model.init_args.init_random_frames=256"]),
    ):
        config = ROOT / "configs" / f"{name}.yaml"
        sides = {"eager": [*extra], "compiled": [*extra, "--model.init_args.compile=true"]}
        warm_up = {}
        for side, overrides in sides.items():
            start = time.perf_counter()
            fit_rl_lightning(config, 0, 2048 if name == "ppo" else 512, False, overrides)
            warm_up[side] = time.perf_counter() - start
        fps: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, overrides in sides.items():
                fps[side].append(fit_rl_lightning(config, 0, frames, False, overrides).fps)
        eager, compiled = (statistics.median(fps[s]) for s in sides)
        print(f"  {name.upper()}: eager {eager:8,.0f}  compiled {compiled:8,.0f}  ", end="")
        print(f"ratio {compiled / eager:5.2f}x  ", end="")
        print(f"(first fit incl. compilation: {warm_up['compiled']:.1f} s vs {warm_up['eager']:.1f} s eager)")


if __name__ == "__main__":
    main()

"""PPO throughput with 1 and 2 DDP processes on CPU (gloo), on a collection-bound config.

Runs ``rl-lightning fit --config configs/ppo.yaml`` with one optimizer step per collector batch
(``n_epochs=1``, one minibatch of the whole batch), so collecting dominates, evaluation off, for the same
global frame budget: once as a single process and once with ``--trainer.strategy ddp --trainer.devices 2``.
Frames/s is the run's own ``time/fps`` (global frames over all ranks / seconds since fit start, so process
start-up and imports are not counted). The issue's target: two processes collect at least 1.6x the frames/s of
one. Each process uses one torch thread; this machine has 2 cores.

    .venv/bin/python benchmarks/ppo_ddp.py
    .venv/bin/python benchmarks/ppo_ddp.py --frames 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(devices: int, frames: int, frames_per_batch: int, root: Path) -> float:
    """One fit; returns its last logged ``time/fps``."""
    strategy = ["--trainer.strategy=ddp", f"--trainer.devices={devices}"] if devices > 1 else []
    command = [
        sys.executable, "-m", "rl_lightning", "fit", "--config", str(ROOT / "configs/ppo.yaml"),
        "--model.n_epochs=1", f"--model.minibatch_size={frames_per_batch}",
        f"--data.frames_per_batch={frames_per_batch}", f"--data.total_frames={frames}",
        "--trainer.limit_val_batches=0", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}", *strategy,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    (metrics,) = root.rglob("metrics.csv")
    with metrics.open() as f:
        return [float(r["time/fps"]) for r in csv.DictReader(f) if r.get("time/fps")][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="global frame budget of each run")
    parser.add_argument("--frames-per-batch", type=int, default=1024, help="per rank")
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting, alternating; the median counts")
    args = parser.parse_args()
    fps: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for devices in fps:
            with tempfile.TemporaryDirectory(prefix="ppo-ddp-") as tmp:
                fps[devices].append(run(devices, args.frames, args.frames_per_batch, Path(tmp)))
    one, two = (statistics.median(fps[d]) for d in (1, 2))
    print(
        f"PPO CartPole-v1, collection-bound (n_epochs=1, one minibatch of {args.frames_per_batch} per rank), ", end=""
    )
    print(f"{args.frames:,} frames per run, median of {args.rounds}")
    print(f"  1 process       {one:10,.0f} frames/s  (runs: {', '.join(f'{x:,.0f}' for x in fps[1])})")
    print(f"  2 DDP processes {two:10,.0f} frames/s  (runs: {', '.join(f'{x:,.0f}' for x in fps[2])})")
    ratio = two / one
    print(f"  ratio 2 / 1     {ratio:10.2f}x  (target >= 1.6x: {'ok' if ratio >= 1.6 else 'MISSED'})")


if __name__ == "__main__":
    main()

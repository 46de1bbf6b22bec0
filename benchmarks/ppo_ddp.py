"""PPO throughput with 1 and 2 DDP processes on CPU (gloo), on a collection-bound config.

Runs ``rl-lightning fit --config configs/ppo.yaml`` with one optimizer step per collector batch
(``n_epochs=1``, one minibatch of the whole batch), so collecting dominates, evaluation off, for the same
global frame budget: as a single process, with ``--trainer.strategy ddp --trainer.devices 2``, and, as the
machine's own ceiling, as two independent single-process fits side by side (half the budget each, no
communication). Frames/s is the steady-state rate from the run's own logged ``time/fps`` (global frames over
all ranks / seconds since fit start): between the first logged batch and the last, so neither process start-up
nor the start of the fit is counted. The issue's target: two DDP processes collect at
least 1.6x the frames/s of one. Each process uses one torch thread; this machine has 2 cores. Settings
alternate within each round; the median of the rounds counts (the machine is a shared VM: single runs vary
by 10-20%).

    .venv/bin/python benchmarks/ppo_ddp.py
    .venv/bin/python benchmarks/ppo_ddp.py --frames 200000 --rounds 5 --frames-per-batch 2048
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


def _command(devices: int, frames: int, frames_per_batch: int, root: Path) -> list[str]:
    strategy = ["--trainer.strategy=ddp", f"--trainer.devices={devices}"] if devices > 1 else []
    return [
        sys.executable, "-m", "rl_lightning", "fit", "--config", str(ROOT / "configs/ppo.yaml"),
        "--model.n_epochs=1", f"--model.minibatch_size={frames_per_batch}",
        f"--data.frames_per_batch={frames_per_batch}", f"--data.total_frames={frames}",
        "--trainer.limit_val_batches=0", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}", *strategy,
    ]  # fmt: skip


def _fps(root: Path) -> float:
    """Steady-state frames/s of the fit that logged under ``root``: between its first logged batch and its last.

    Each logged ``time/fps`` is frames / seconds since fit start, so ``frames / fps`` is the time of that point;
    the rate between the first point (after ``log_every_n_steps`` batches) and the last leaves out the start-up
    inside the fit (env creation, first calls), which a short run would otherwise weigh more in the faster setting.
    """
    (metrics,) = root.rglob("metrics.csv")
    with metrics.open() as f:
        points = [(float(r["frames"]), float(r["time/fps"])) for r in csv.DictReader(f) if r.get("time/fps")]
    (first_frames, first_fps), (last_frames, last_fps) = points[0], points[-1]
    return (last_frames - first_frames) / (last_frames / last_fps - first_frames / first_fps)


def run(setting: str, frames: int, frames_per_batch: int) -> float:
    """One measurement of ``setting`` ("1 process", "2 DDP processes", "2 independent"); returns frames/s."""
    with tempfile.TemporaryDirectory(prefix="ppo-ddp-") as tmp:
        roots = [Path(tmp) / str(i) for i in range(2 if setting == "2 independent" else 1)]
        devices = 2 if setting == "2 DDP processes" else 1
        budget = frames // len(roots)
        procs = [
            subprocess.Popen(
                _command(devices, budget, frames_per_batch, root),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for root in roots
        ]
        for proc in procs:
            _, stderr = proc.communicate()
            if proc.returncode:
                raise RuntimeError(stderr.decode()[-3000:])
        return sum(_fps(root) for root in roots)


SETTINGS = ("1 process", "2 DDP processes", "2 independent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="global frame budget of each run")
    parser.add_argument("--frames-per-batch", type=int, default=1024, help="per rank")
    parser.add_argument("--rounds", type=int, default=3, help="runs per setting, alternating; the median counts")
    args = parser.parse_args()
    fps: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            fps[setting].append(run(setting, args.frames, args.frames_per_batch))
    median = {s: statistics.median(v) for s, v in fps.items()}
    print(
        f"PPO CartPole-v1, collection-bound (n_epochs=1, one minibatch of {args.frames_per_batch} per rank), ", end=""
    )
    print(f"{args.frames:,} frames per run, median of {args.rounds}")
    for setting in SETTINGS:
        runs = ", ".join(f"{x:,.0f}" for x in fps[setting])
        print(f"  {setting:16s} {median[setting]:10,.0f} frames/s  (runs: {runs})")
    one = median["1 process"]
    ratio = median["2 DDP processes"] / one
    ceiling = median["2 independent"] / one
    print(f"  ratio DDP / 1          {ratio:10.2f}x  (target >= 1.6x: {'ok' if ratio >= 1.6 else 'MISSED'})")
    print(f"  ratio independent / 1  {ceiling:10.2f}x  (the machine's ceiling for 2 processes)")


if __name__ == "__main__":
    main()

"""PPO throughput with 1 and 2 DDP processes on CPU (gloo), on a collection-bound config, against a plain
PyTorch loop with torch.distributed doing the same work.

rl_lightning runs ``rl-lightning fit --config configs/ppo.yaml`` with one optimizer step per collector batch
(``n_epochs=1``, one minibatch of the whole batch), so collecting dominates, evaluation off, for the same
global frame budget: as a single process, with ``--trainer.strategy ddp --trainer.devices 2``, and, as the
machine's own ceiling, as two independent single-process fits side by side (half the budget each, no
communication). The reference is ``ppo_cartpole.py``'s plain loop with the same settings, run as one process
and as two gloo processes that all-reduce the flattened gradients after every backward (as CleanRL's
multi-GPU PPO does): the least synchronization data-parallel PPO can have.

Frames/s is the steady-state rate (global frames over all ranks / seconds) between the end of batch
``log_every_n_steps`` (10, the first batch rl_lightning logs ``time/fps`` for) and the last batch, so neither
process start-up nor the start of the fit is counted. Each process uses one torch thread; this machine has
2 cores. Settings alternate within each round, and each round's figures print as it ends; the median of the
rounds counts (the machine is a shared VM: single runs vary by 10-30%, and DDP runs, of both sides, are bimodal).

The issue's target: two DDP processes collect at least 1.6x the frames/s of one.

    .venv/bin/python benchmarks/ppo_ddp.py
    .venv/bin/python benchmarks/ppo_ddp.py --frames 200000 --rounds 5 --frames-per-batch 2048
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rl_lightning.builders import TRAINER_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
FIRST_POINT: int = TRAINER_DEFAULTS["log_every_n_steps"]  # the first batch rl_lightning logs time/fps for


def _command(devices: int, frames: int, frames_per_batch: int, root: Path) -> list[str]:
    strategy = ["--trainer.strategy=ddp", f"--trainer.devices={devices}"] if devices > 1 else []
    return [
        sys.executable, "-m", "rl_lightning", "fit", "--config", str(ROOT / "configs/ppo.yaml"),
        "--model.n_epochs=1", f"--model.batch_size={frames_per_batch}",
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


def _run_rl_lightning(setting: str, frames: int, frames_per_batch: int) -> float:
    with tempfile.TemporaryDirectory(prefix="ppo-ddp-") as tmp:
        roots = [Path(tmp) / str(i) for i in range(2 if setting == "2 independent" else 1)]
        devices = 2 if setting == "2 DDP processes" else 1
        budget = frames // len(roots)
        commands = [_command(devices, budget, frames_per_batch, root) for root in roots]
        _wait([subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands])
        return sum(_fps(root) for root in roots)


# --------------------------------------------------------------------------------------------------
# The reference: ppo_cartpole.py's plain loop, data-parallel with torch.distributed.
# --------------------------------------------------------------------------------------------------


def _all_reduce_grads(agent: nn.Module) -> None:
    """Average the gradients over the ranks with one all-reduce of all of them, flattened."""
    grads = [p.grad for p in agent.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, synced in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(synced.view_as(g))


def _plain_worker(out: Path, frames: int, frames_per_batch: int) -> None:
    """One rank of the plain run (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment)."""
    from ppo_cartpole import CONFIG, load_hparams, run_plain

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world > 1:
        dist.init_process_group("gloo")
    hp = load_hparams(CONFIG)
    hp.update(n_epochs=1, batch_size=frames_per_batch, frames_per_batch=frames_per_batch)
    points: list[tuple[int, float]] = []
    run_plain(
        hp,
        hp["seed"] + rank,
        frames // world,
        evaluation=False,
        sync_grads=_all_reduce_grads if world > 1 else None,
        on_batch=lambda done: points.append((done * world, time.perf_counter())),
    )
    if rank == 0:  # the ranks step in lockstep: rank zero's clock times them all
        (first_frames, first_time), (last_frames, last_time) = points[FIRST_POINT - 1], points[-1]
        out.write_text(json.dumps((last_frames - first_frames) / (last_time - first_time)))
    if world > 1:
        dist.destroy_process_group()


def _run_plain(world: int, frames: int, frames_per_batch: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="ppo-ddp-plain-") as tmp:
        out = Path(tmp) / "fps.json"
        command = [sys.executable, __file__, "--plain-worker", str(out), f"--frames={frames}"]
        command.append(f"--frames-per-batch={frames_per_batch}")
        env = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs = [
            subprocess.Popen(command, env={**env, "RANK": str(r)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for r in range(world)
        ]
        _wait(procs)
        return float(json.loads(out.read_text()))


def _wait(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        _, stderr = proc.communicate()
        if proc.returncode:
            raise RuntimeError(stderr.decode()[-3000:])


SETTINGS = ("1 process", "2 DDP processes", "2 independent", "plain, 1 process", "plain, 2 processes")


def run(setting: str, frames: int, frames_per_batch: int) -> float:
    """One measurement of ``setting`` (one of ``SETTINGS``); returns global frames/s."""
    if setting.startswith("plain"):
        return _run_plain(2 if "2" in setting else 1, frames, frames_per_batch)
    return _run_rl_lightning(setting, frames, frames_per_batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="global frame budget of each run")
    parser.add_argument("--frames-per-batch", type=int, default=1024, help="per rank")
    parser.add_argument("--rounds", type=int, default=3, help="runs per setting, alternating; the median counts")
    parser.add_argument("--plain-worker", type=Path, help=argparse.SUPPRESS)  # one rank of the reference
    args = parser.parse_args()
    least = 2 * FIRST_POINT * 2 * args.frames_per_batch  # 2 processes: twice the batches the timing leaves out
    if args.frames < least:
        parser.error(f"--frames={args.frames} leaves too few batches to time; give --frames {least} or more.")
    if args.plain_worker is not None:
        _plain_worker(args.plain_worker, args.frames, args.frames_per_batch)
        return
    print(f"PPO CartPole-v1, collection-bound (n_epochs=1, one minibatch of {args.frames_per_batch} a rank), ", end="")
    print(f"{args.frames:,} frames a run, {args.rounds} rounds; frames/s:")
    short = ("1 proc", "DDP", "indep.", "plain 1", "plain 2")
    print("  round " + "".join(f"{name:>9s}" for name in short) + "   DDP/1  plain 2/1  indep./1")
    fps: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for setting in SETTINGS:
            fps[setting].append(run(setting, args.frames, args.frames_per_batch))
        row = [fps[s][-1] for s in SETTINGS]
        ratios = f"{row[1] / row[0]:6.2f}x {row[4] / row[3]:9.2f}x {row[2] / row[0]:8.2f}x"
        print(f"  {r + 1:5d} " + "".join(f"{x:9,.0f}" for x in row) + f"  {ratios}", flush=True)
    median = {s: statistics.median(v) for s, v in fps.items()}
    print("  median" + "".join(f"{median[s]:9,.0f}" for s in SETTINGS))
    ratio = median["2 DDP processes"] / median["1 process"]
    plain_ratio = median["plain, 2 processes"] / median["plain, 1 process"]
    print(f"ratio DDP / 1 (medians)           {ratio:5.2f}x  (target >= 1.6x: {'ok' if ratio >= 1.6 else 'MISSED'})")
    print(f"ratio plain DDP / plain 1         {plain_ratio:5.2f}x  (the reference, same rounds)")
    print(f"ratio independent / 1             {median['2 independent'] / median['1 process']:5.2f}x")
    one = median["1 process"] / median["plain, 1 process"]
    two = median["2 DDP processes"] / median["plain, 2 processes"]
    print(f"ratio rl_lightning / plain        {one:5.2f}x (1 process), {two:.2f}x (2 processes)")


if __name__ == "__main__":
    main()

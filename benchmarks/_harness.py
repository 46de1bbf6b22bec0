"""What the benchmarks of rl_lightning against a plain loop and stable-baselines3 share: config reading,
seeding, the rl_lightning side, the rotating run schedule and the report tables.

The scripts import it as ``from _harness import ...``: run as ``python benchmarks/<script>.py``, Python puts
``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import json
import logging
import pstats
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rl_lightning import RLDataModule, build

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("plain", "rl_lightning", "sb3")  # the order of the warm-up, of the first seed and of the tables
REFERENCES = {"plain": "plain", "sb3": "SB3"}  # the sides rl_lightning is compared with, and their labels


@dataclass
class Result:
    """One timed run of one side."""

    side: str
    seed: int
    frames: int
    seconds: float
    eval_return: float | None  # last evaluation's mean return (solve/threshold runs)
    updates: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def ups(self) -> float:
        return self.updates / self.seconds


# A side's run: (seed, total_frames, evaluation) -> Result.
Runner = Callable[[int, int, bool], Result]


def read_hparams(config: Path, module: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parsed config, and ``module``'s and RLDataModule's defaults overridden by the config's model
    init_args and data, plus ``val_check_interval``."""
    cfg = yaml.safe_load(config.read_text())
    hp: dict[str, Any] = {}
    for cls in (module, RLDataModule):
        for name, p in inspect.signature(cls).parameters.items():
            if p.default is not inspect.Parameter.empty:
                hp[name] = p.default
    hp.update(cfg["model"]["init_args"])
    hp.update(cfg["data"])
    hp["val_check_interval"] = cfg["trainer"].get("val_check_interval", 10)
    return cfg, hp


def require(hp: dict[str, Any], expected: dict[str, Any]) -> None:
    """Exit if ``hp`` differs from what the plain loop implements."""
    wrong = {k: hp[k] for k, v in expected.items() if hp[k] != v}
    if wrong:
        raise SystemExit(f"the plain loop does not implement {wrong}")


def seed_all(seed: int) -> None:
    """What ``seed_everything`` does for the rl_lightning side."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit_rl_lightning(
    config: Path, seed: int, total_frames: int, evaluation: bool, extra_overrides: Sequence[str] = ()
) -> Result:
    """``build(config, overrides)`` and ``trainer.fit``, as a user runs it, timed around ``fit``; logs and
    checkpoints go to a temporary directory; without ``evaluation`` validation is off."""
    with tempfile.TemporaryDirectory() as root:
        overrides = [
            f"--seed_everything={seed}",
            f"--data.seed={seed}",
            f"--data.total_frames={total_frames}",
            f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.enable_progress_bar=false",
            *extra_overrides,
        ]
        if not evaluation:
            overrides.append("--trainer.limit_val_batches=0")
        trainer, model, data = build(config, overrides)
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        seconds = time.perf_counter() - start
    metric = trainer.callback_metrics.get("val/episode_return")
    eval_return = None if metric is None else float(metric)
    return Result("rl_lightning", seed, model.frames, seconds, eval_return, model.updates)


def early_stopping(threshold: float) -> str:
    """The override that adds Lightning's ``EarlyStopping`` at the first evaluation whose mean return passes
    ``threshold`` (``mode="max"`` compares with ``>``; patience out of reach), as a user would stop a run."""
    stop = {
        "class_path": "lightning.pytorch.callbacks.EarlyStopping",
        "init_args": {
            "monitor": "val/episode_return",
            "mode": "max",
            "stopping_threshold": threshold,
            "patience": 1_000_000,
        },
    }
    return f"--trainer.callbacks+={json.dumps(stop)}"


def parser(doc: str | None, seeds: list[int], throughput_frames: int, threads_help: str) -> argparse.ArgumentParser:
    """The options both scripts take: ``--seeds``, ``--threads``, ``--throughput-frames``, ``--profile``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=seeds)
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.add_argument("--throughput-frames", type=int, default=throughput_frames)
    p.add_argument("--profile", action="store_true", help="also cProfile one throughput run of each side")
    return p


def quiet() -> None:
    """Silence Lightning's info logs and all warnings."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def compare(
    runners: Mapping[str, Runner], seeds: list[int], solve_frames: int, throughput_frames: int, warm_frames: int
) -> tuple[list[Result], list[Result]]:
    """An untimed warm-up of each side, then per seed a solve run (evaluation on) and a throughput run
    (evaluation off) of each side, the order of the sides (``runners``' keys) rotating from seed to seed (with
    three sides and three seeds each side runs once first, once second, once last; with two sides they
    alternate). Returns (solve, throughput)."""
    sides = tuple(runners)
    for side in sides:  # warm-up (imports, first-call costs), not timed
        runners[side](0, warm_frames, False)
    solve: list[Result] = []
    throughput: list[Result] = []
    for k, seed in enumerate(seeds):
        order = sides[k % len(sides) :] + sides[: k % len(sides)]
        for side in order:
            solve.append(runners[side](seed, solve_frames, True))
        for side in order:
            throughput.append(runners[side](seed, throughput_frames, False))
    return solve, throughput


def compare_throughput(runners: Mapping[str, Runner], seeds: list[int], frames: int, warm_frames: int) -> list[Result]:
    """:func:`compare` without the solve runs: an untimed warm-up of each side, then per seed a throughput run
    (evaluation off) of each side, the order of the sides rotating from seed to seed."""
    sides = tuple(runners)
    for side in sides:
        runners[side](0, warm_frames, False)
    results: list[Result] = []
    for k, seed in enumerate(seeds):
        for side in sides[k % len(sides) :] + sides[: k % len(sides)]:
            results.append(runners[side](seed, frames, False))
    return results


def table(
    title: str, results: list[Result], threshold: float | None, updates: bool = False, reached: str = "solved"
) -> dict[str, dict[str, float]]:
    """Print one row per run and a mean row per side; return the means. With a ``threshold``, add the eval
    return and a ``reached`` column; with ``updates``, the updates and updates/s columns."""
    print(f"\n{title}")
    w = len(reached)
    head = f"{'side':<13} {'seed':>4} {'frames':>7}" + (f" {'updates':>7}" if updates else "")
    head += f" {'seconds':>8} {'frames/s':>9}" + (f" {'updates/s':>9}" if updates else "")
    print(head + (f" {'eval return':>11} {reached:>{w}}" if threshold is not None else ""))
    means: dict[str, dict[str, float]] = {}
    for side in SIDES:
        rows = [r for r in results if r.side == side]
        for r in rows:
            line = f"{side:<13} {r.seed:>4} {r.frames:>7}" + (f" {r.updates:>7}" if updates else "")
            line += f" {r.seconds:>8.2f} {r.fps:>9.0f}" + (f" {r.ups:>9.0f}" if updates else "")
            if threshold is not None:
                ret = float("nan") if r.eval_return is None else r.eval_return
                line += f" {ret:>11.1f} {'yes' if ret > threshold else 'NO':>{w}}"
            print(line)
        seconds = sum(r.seconds for r in rows)
        means[side] = {
            "frames": statistics.mean(r.frames for r in rows),
            "updates": statistics.mean(r.updates for r in rows),
            "seconds": statistics.mean(r.seconds for r in rows),
            "fps": sum(r.frames for r in rows) / seconds,
            "ups": sum(r.updates for r in rows) / seconds,
        }
        m = means[side]
        sd = statistics.stdev(r.seconds for r in rows) if len(rows) > 1 else 0.0
        line = f"{side:<13} {'mean':>4} {m['frames']:>7.0f}" + (f" {m['updates']:>7.0f}" if updates else "")
        line += f" {m['seconds']:>8.2f} {m['fps']:>9.0f}" + (f" {m['ups']:>9.0f}" if updates else "")
        print(f"{line}   (sd {sd:.2f} s)")
    return means


def print_ratios(
    a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], goal: str, width: int, updates: bool = False
) -> None:
    """Print the ratios rl_lightning/reference, one column per reference, of the solve means ``a`` (time and
    frames to ``goal``, seconds per frame) and the throughput means ``b`` (frames/s; with ``updates``, also
    updates/s and the whole time difference divided by the reference's updates); labels padded to ``width``."""
    rl = "rl_lightning"
    rows: list[tuple[str, Callable[[str], str], str]] = [
        ("(a) mean time to " + goal, lambda r: f"{a[rl]['seconds'] / a[r]['seconds']:.2f}x", ""),
        ("    mean frames to " + goal, lambda r: f"{a[rl]['frames'] / a[r]['frames']:.2f}x", ""),
        ("    seconds per frame", lambda r: f"{a[r]['fps'] / a[rl]['fps']:.2f}x", "time normalized by frames used"),
        ("(b) throughput frames/s", lambda r: f"{b[rl]['fps'] / b[r]['fps']:.2f}x", ""),
    ]
    if updates:
        rows += [
            ("    throughput updates/s", lambda r: f"{b[rl]['ups'] / b[r]['ups']:.2f}x", ""),
            (
                "    extra time per update",
                lambda r: f"{(b[rl]['seconds'] - b[r]['seconds']) / b[r]['updates'] * 1e6:.0f} us",
                "whole difference of (b) divided by the updates",
            ),
        ]
    print(f"\n{'ratios (threads ' + str(torch.get_num_threads()) + ')':<{width + 2}}", end="")
    print("".join(f"{rl + '/' + label:>20}" for label in REFERENCES.values()))
    for label, ratio, note in rows:
        cells = "".join(f"{ratio(r):>20}" for r in REFERENCES)
        print(f"  {label:<{width}}{cells}" + (f"   ({note})" if note else ""))


def profile(runners: Mapping[str, Runner], seed: int, frames: int) -> None:
    """Print a cProfile (top 25 by internal time) of one throughput run of each side (``runners``' keys)."""
    for side in runners:
        print(f"\ncProfile of one {side} throughput run (top 25 by internal time)")
        prof = cProfile.Profile()
        prof.runcall(runners[side], seed, frames, False)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)

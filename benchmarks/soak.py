"""Soak test: PPO and SAC for 200,000+ frames each, reporting resident memory (RSS) over the run.

Each algorithm runs its config (``configs/ppo.yaml``, ``configs/sac.yaml``) through ``build`` + ``trainer.fit``
in this process, evaluation every ``val_check_interval`` batches as configured, checkpoints written as
configured; a callback samples RSS (``/proc/self/status``) after every collector batch. SAC's replay buffer is
capped at ``--sac-buffer`` transitions so it fills early in the run: from then on memory must stay flat. The
reference is the RSS once the buffer is full (SAC) or after the first tenth of the run (PPO); the script prints
RSS at tenths of the run and the growth from the reference to the end (target: flat, within a few percent).

    .venv/bin/python benchmarks/soak.py
    .venv/bin/python benchmarks/soak.py --frames 500000 --sac-utd 0.5
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import lightning.pytorch as pl
import torch
from _harness import ROOT, quiet

from rl_lightning import build


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RSSSampler(pl.Callback):
    """Records ``(frames, RSS in MiB)`` after every training batch."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.samples.append((pl_module.frames, rss_mib()))


def soak(name: str, frames: int, overrides: list[str], reference_frames: int) -> None:
    sampler = RSSSampler()
    with tempfile.TemporaryDirectory(prefix="soak-") as root:
        trainer, model, data = build(
            ROOT / "configs" / f"{name}.yaml",
            [f"--data.total_frames={frames}", f"--trainer.default_root_dir={root}",
             f"--trainer.logger.init_args.save_dir={root}", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false", *overrides],
        )  # fmt: skip
        trainer.callbacks.append(sampler)  # type: ignore[attr-defined]
        trainer.fit(model, datamodule=data)
    samples = sampler.samples
    reference = next(rss for f, rss in samples if f >= reference_frames)
    final = samples[-1][1]
    print(f"\n{name.upper()}: {samples[-1][0]:,} frames; RSS (MiB) at tenths of the run:")
    tenths = [samples[min(len(samples) - 1, i * len(samples) // 10)] for i in range(1, 11)]
    print("  " + "  ".join(f"{f // 1000}k:{rss:.0f}" for f, rss in tenths))
    growth = (final - reference) / reference * 100
    print(f"  from {reference_frames:,} frames to the end: {reference:.0f} -> {final:.0f} MiB ({growth:+.1f}%)")
    print(f"  peak {max(rss for _, rss in samples):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--sac-buffer", type=int, default=50_000, help="SAC replay-buffer capacity")
    parser.add_argument("--sac-utd", type=float, default=0.25, help="SAC updates per frame (speed of the soak)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet()
    print(f"soak: {args.frames:,} frames per algorithm; torch={torch.__version__}")
    ppo_overrides = ["--trainer.callbacks=[]"]  # no early stop at the solved threshold: run the whole budget
    soak("ppo", args.frames, ppo_overrides, reference_frames=args.frames // 10)
    sac = [f"--model.init_args.buffer_size={args.sac_buffer}", f"--model.init_args.utd_ratio={args.sac_utd}"]
    soak("sac", args.frames, sac, reference_frames=args.sac_buffer)


if __name__ == "__main__":
    main()

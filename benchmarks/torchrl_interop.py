"""torchrl's losses in rl_lightning's loop against rl_lightning's own algorithms and a plain PyTorch loop, frames/s.

    .venv-torchrl/bin/python benchmarks/torchrl_interop.py [--seeds 0 1 2] [--threads N] [--throughput-frames 25000]

Runs in the torchrl environment (``bash scripts/setup_torchrl.sh``) with the bench extra's stable-baselines3, which
``ppo_cartpole.py`` imports: ``.venv-torchrl/bin/pip install -c constraints-torchrl.txt stable-baselines3``.

PPO on CartPole-v1, three sides in one process, all with ``configs/ppo.yaml``'s hyperparameters and data:

- **plain**: ``ppo_cartpole.run_plain``, the CleanRL-style loop (no Trainer, no hooks, no TensorDict);
- **rl_lightning**: ``rl_lightning.PPO`` from ``configs/ppo.yaml``, built and fitted as the CLI does;
- **torchrl**: ``TorchRLModule`` over torchrl's ``ClipPPOLoss`` and ``GAE`` (``examples/torchrl_ppo.py``'s
  ``TorchRLPPO``) from ``configs/torchrl_ppo.yaml``, its hyperparameters and callbacks replaced by
  ``configs/ppo.yaml``'s (the same logger, ``ModelCheckpoint`` and ``EarlyStopping``; not the example's
  ``FunctionHook`` functions).

Every side does the same number of environment steps, updates and minibatch sizes. What differs in the work: the
torchrl side keeps its learning rate constant (``TorchRLModule`` has no scheduler; ``ppo.yaml`` anneals it), uses
torch's default initialization (rl_lightning's PPO: orthogonal), Adam's default implementation (PPO's is fused) and
torchrl's loss, which also computes ESS, ratio statistics and the explained variance at every update; torchrl's GAE
runs the critic on every observation and every next observation (rl_lightning's PPO skips the next observations that
are the following step's).

Metric: throughput, frames/s over ``--throughput-frames`` frames with evaluation off, timed around ``trainer.fit``
(rl_lightning and torchrl) or from after the networks are built (plain); an untimed warm-up of each side first, then
per seed one run of each side, the order rotating from seed to seed.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import replace
from functools import partial
from typing import Any

import torch
import torchrl
import yaml
from _harness import ROOT, Result, Runner, fit_rl_lightning, parser, profile, quiet
from ppo_cartpole import CONFIG as PPO_CONFIG
from ppo_cartpole import load_hparams, run_plain

TORCHRL_PPO_CONFIG = ROOT / "configs" / "torchrl_ppo.yaml"


def torchrl_ppo_overrides(hp: dict[str, Any], callbacks: list[dict[str, Any]]) -> list[str]:
    """``configs/torchrl_ppo.yaml`` overrides that give TorchRLPPO ``configs/ppo.yaml``'s hyperparameters and
    callbacks (``hp`` from ``ppo_cartpole.load_hparams``)."""
    hidden = hp["hidden_sizes"]
    fits = {
        "two equal hidden layers": len(hidden) == 2 and hidden[0] == hidden[1],
        "activation tanh": hp["activation"] == "tanh",
        "entropy_coef 0": hp["entropy_coef"] == 0.0,
        "normalize_advantage": hp["normalize_advantage"],
    }
    if not all(fits.values()):
        raise SystemExit(f"TorchRLPPO (examples/torchrl_ppo.py) builds only PPO with {fits}: configs/ppo.yaml differs")
    model = {
        "hidden": hidden[0],
        "gamma": hp["gamma"],
        "lmbda": hp["gae_lambda"],
        "clip_epsilon": hp["clip_epsilon"],
        "lr": hp["lr"],
        "n_epochs": hp["n_epochs"],
        "batch_size": hp["batch_size"],
        "max_grad_norm": hp["max_grad_norm"],
    }
    return [*(f"--model.init_args.{k}={v}" for k, v in model.items()), f"--trainer.callbacks={json.dumps(callbacks)}"]


def ppo_runners(threads: int | None) -> dict[str, Runner]:
    hp = load_hparams(PPO_CONFIG)
    callbacks = _callbacks(PPO_CONFIG)
    threads_override = [] if threads is None else [f"--torch_threads={threads}"]

    def torchrl_side(seed: int, frames: int, evaluation: bool) -> Result:
        overrides = [*torchrl_ppo_overrides(hp, callbacks), *threads_override]
        return replace(fit_rl_lightning(TORCHRL_PPO_CONFIG, seed, frames, evaluation, overrides), side="torchrl")

    return {
        "plain": partial(run_plain, hp),
        "rl_lightning": partial(fit_rl_lightning, PPO_CONFIG, extra_overrides=threads_override),
        "torchrl": torchrl_side,
    }


def _callbacks(config: Any) -> list[dict[str, Any]]:
    return list(yaml.safe_load(config.read_text())["trainer"]["callbacks"])


def measure(runners: dict[str, Runner], seeds: list[int], frames: int, warm_frames: int) -> list[Result]:
    """An untimed warm-up of each side, then per seed one throughput run of each side, the order rotating."""
    sides = list(runners)
    for side in sides:
        runners[side](0, warm_frames, False)
    results = []
    for k, seed in enumerate(seeds):
        for side in sides[k % len(sides) :] + sides[: k % len(sides)]:
            results.append(runners[side](seed, frames, False))
    return results


def report(title: str, results: list[Result], sides: list[str]) -> dict[str, float]:
    """One row per run and a mean row per side (frames over seconds, all runs); returns each side's frames/s."""
    print(f"\n{title}")
    print(f"{'side':<13} {'seed':>4} {'frames':>7} {'updates':>7} {'seconds':>8} {'frames/s':>9}")
    fps: dict[str, float] = {}
    for side in sides:
        rows = [r for r in results if r.side == side]
        for r in rows:
            updates = r.updates or "-"  # the plain loops count none
            print(f"{side:<13} {r.seed:>4} {r.frames:>7} {updates:>7} {r.seconds:>8.2f} {r.fps:>9.0f}")
        fps[side] = sum(r.frames for r in rows) / sum(r.seconds for r in rows)
        sd = statistics.stdev(r.seconds for r in rows) if len(rows) > 1 else 0.0
        print(f"{side:<13} {'mean':>4} {'':>7} {'':>7} {statistics.mean(r.seconds for r in rows):>8.2f} "
              f"{fps[side]:>9.0f}   (sd {sd:.2f} s)")  # fmt: skip
    return fps


def print_ratios(fps: dict[str, float], pairs: list[tuple[str, str]]) -> None:
    print("\nframes/s ratios")
    for a, b in pairs:
        print(f"  {a + '/' + b:<24} {fps[a] / fps[b]:.2f}x")


def main() -> None:
    p = parser(__doc__, [0, 1, 2], 25_000, "torch.set_num_threads for all sides (default: the configs' 1)")
    args = p.parse_args()
    quiet()
    sys.path.insert(0, str(ROOT))  # configs/torchrl_ppo.yaml names examples.torchrl_ppo.TorchRLPPO
    threads = args.threads if args.threads is not None else load_hparams(PPO_CONFIG)["torch_threads"]
    if threads is not None:
        torch.set_num_threads(threads)
    hp = load_hparams(PPO_CONFIG)
    print(
        f"torch {torch.__version__}, torchrl {torchrl.__version__}, {os.cpu_count()} CPUs, threads "
        f"{torch.get_num_threads()}; PPO on {hp['env_id']} from {PPO_CONFIG.relative_to(ROOT)}: num_envs="
        f"{hp['num_envs']} frames_per_batch={hp['frames_per_batch']} batch_size={hp['batch_size']} "
        f"n_epochs={hp['n_epochs']} hidden_sizes={hp['hidden_sizes']}; {args.throughput_frames} frames per run, "
        "evaluation off"
    )
    runners = ppo_runners(threads)
    results = measure(runners, args.seeds, args.throughput_frames, warm_frames=2 * hp["frames_per_batch"])
    fps = report("PPO, CartPole-v1: throughput", results, list(runners))
    print_ratios(fps, [("torchrl", "rl_lightning"), ("rl_lightning", "plain"), ("torchrl", "plain")])
    if args.profile:
        profile(runners, args.seeds[0], args.throughput_frames)


if __name__ == "__main__":
    main()

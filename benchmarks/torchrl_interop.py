"""torchrl's losses in rl_lightning's loop against rl_lightning's own algorithms and a plain PyTorch loop, frames/s.

    .venv-torchrl/bin/python benchmarks/torchrl_interop.py [--only ppo|sac] [--seeds 0 1 2] [--threads N]
        [--throughput-frames 25000] [--sac-frames 6000] [--profile]

Runs in the torchrl environment (``bash scripts/setup_torchrl.sh``) with the bench extra's stable-baselines3, which
``ppo_cartpole.py`` and ``sac_pendulum.py`` import: ``.venv-torchrl/bin/pip install -c constraints-torchrl.txt
stable-baselines3``. Three sides per algorithm, in one process, with one config's hyperparameters and data:

- **plain**: the plain PyTorch loop of ``ppo_cartpole.py`` / ``sac_pendulum.py`` (``run_plain``: no Trainer, no
  hooks, no TensorDict), the same computation as rl_lightning's algorithm;
- **rl_lightning**: ``rl_lightning.PPO`` from ``configs/ppo.yaml`` / ``rl_lightning.SAC`` from ``configs/sac.yaml``,
  built and fitted as the CLI does (``_harness.fit_rl_lightning``);
- **torchrl**: torchrl's losses in rl_lightning's loop, built and fitted the same way: ``TorchRLModule`` over
  ``ClipPPOLoss`` and ``GAE`` (``examples/torchrl_ppo.py``'s ``TorchRLPPO``, ``configs/torchrl_ppo.yaml``) and
  ``TorchRLOffPolicyModule`` over ``SACLoss`` and ``SoftUpdate`` (``examples/torchrl_sac.py``'s ``TorchRLSAC``,
  ``configs/torchrl_sac.yaml``), their hyperparameters and callbacks replaced by ``ppo.yaml``'s / ``sac.yaml``'s
  (the same logger and ``ModelCheckpoint``; not the PPO example's ``FunctionHook`` functions).

Each side makes the same environment steps and the same number of updates on minibatches of the same size. What
differs in the work: the torchrl sides use torch's default initialization (rl_lightning's: orthogonal); torchrl's
PPO keeps its learning rate constant (``TorchRLModule`` has no scheduler; ``ppo.yaml`` anneals it), ``ClipPPOLoss``
also computes ESS, ratio statistics and the explained variance at every update, and torchrl's ``GAE`` runs the
critic on every observation and every next observation (rl_lightning's PPO skips the next observations that are the
following step's); ``SACLoss`` runs its twin Q networks through ``vmap`` over stacked parameters (rl_lightning's
SAC: one network after the other).

Metric: throughput, frames/s over ``--throughput-frames`` (PPO) / ``--sac-frames`` (SAC, ``init_random_frames`` of
random actions included) frames with evaluation off, timed around ``trainer.fit`` (rl_lightning, torchrl) or from
after the networks are built (plain); an untimed warm-up of each side first, then per seed one run of each side, the
order rotating from seed to seed.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import ppo_cartpole
import sac_pendulum
import torch
import torchrl
import yaml
from _harness import ROOT, Result, Runner, compare_throughput, fit_rl_lightning, parser, profile, quiet

TORCHRL_PPO_CONFIG = ROOT / "configs" / "torchrl_ppo.yaml"
TORCHRL_SAC_CONFIG = ROOT / "configs" / "torchrl_sac.yaml"


def two_equal_layers(hp: dict[str, Any], activation: str, example: str, **more: bool) -> int:
    """The width of ``hp``'s two equal hidden layers, after checking that the torchrl example builds what ``hp``
    asks for."""
    hidden = hp["hidden_sizes"]
    fits = {
        "two equal hidden layers": len(hidden) == 2 and hidden[0] == hidden[1],
        f"activation {activation}": hp["activation"] == activation,
        **more,
    }
    if not all(fits.values()):
        raise SystemExit(f"{example} builds only networks with {fits}; the config differs")
    return int(hidden[0])


def overrides(model: dict[str, Any], config: Path, threads: int | None) -> list[str]:
    """CLI overrides: ``model``'s init args, ``config``'s callbacks, the thread count."""
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    args = [f"--model.init_args.{k}={v}" for k, v in model.items()]
    args.append(f"--trainer.callbacks={json.dumps(callbacks)}")
    return args + ([] if threads is None else [f"--torch_threads={threads}"])


def ppo_runners(hp: dict[str, Any], threads: int | None) -> dict[str, Runner]:
    hidden = two_equal_layers(
        hp,
        "tanh",
        "examples/torchrl_ppo.py",
        entropy_coef_0=hp["entropy_coef"] == 0.0,
        normalize_advantage=hp["normalize_advantage"],
    )
    model = {
        "hidden": hidden,
        "gamma": hp["gamma"],
        "lmbda": hp["gae_lambda"],
        "clip_epsilon": hp["clip_epsilon"],
        "lr": hp["lr"],
        "n_epochs": hp["n_epochs"],
        "batch_size": hp["batch_size"],
        "max_grad_norm": hp["max_grad_norm"],
    }
    torchrl_args = overrides(model, ppo_cartpole.CONFIG, threads)
    own_args = [] if threads is None else [f"--torch_threads={threads}"]
    return {
        "plain": partial(ppo_cartpole.run_plain, hp),
        "rl_lightning": partial(fit_rl_lightning, ppo_cartpole.CONFIG, extra_overrides=own_args),
        "torchrl": partial(fit_torchrl, TORCHRL_PPO_CONFIG, torchrl_args),
    }


def sac_runners(hp: dict[str, Any], threads: int | None) -> dict[str, Runner]:
    if hp["actor_lr"] is not None or hp["critic_lr"] is not None or hp["alpha_lr"] is not None:
        raise SystemExit("examples/torchrl_sac.py has one learning rate; configs/sac.yaml sets one per network")
    if hp["target_entropy"] is not None:
        raise SystemExit("examples/torchrl_sac.py's SACLoss targets -dim(A); configs/sac.yaml sets target_entropy")
    model = {
        "hidden": two_equal_layers(hp, "relu", "examples/torchrl_sac.py"),
        **{k: hp[k] for k in ("lr", "gamma", "tau", "init_alpha", "batch_size", "buffer_size")},
        **{k: hp[k] for k in ("init_random_frames", "utd_ratio")},
    }
    torchrl_args = overrides(model, sac_pendulum.CONFIG, threads)
    own_args = [] if threads is None else [f"--torch_threads={threads}"]
    return {
        "plain": partial(sac_pendulum.run_plain, hp, threshold=float("inf")),  # evaluation is off: never reached
        "rl_lightning": partial(fit_rl_lightning, sac_pendulum.CONFIG, extra_overrides=own_args),
        "torchrl": partial(fit_torchrl, TORCHRL_SAC_CONFIG, torchrl_args),
    }


def fit_torchrl(config: Path, args: list[str], seed: int, total_frames: int, evaluation: bool) -> Result:
    """``fit_rl_lightning`` of a torchrl config, labelled as the torchrl side."""
    return replace(fit_rl_lightning(config, seed, total_frames, evaluation, args), side="torchrl")


def report(title: str, results: list[Result], sides: list[str]) -> dict[str, float]:
    """One row per run and a mean row per side (frames over seconds, all runs); returns each side's frames/s."""
    print(f"\n{title}")
    print(f"{'side':<13} {'seed':>4} {'frames':>7} {'updates':>7} {'seconds':>8} {'frames/s':>9}")
    fps: dict[str, float] = {}
    for side in sides:
        rows = [r for r in results if r.side == side]
        for r in rows:
            updates = r.updates or "-"  # the plain PPO loop counts none
            print(f"{side:<13} {r.seed:>4} {r.frames:>7} {updates:>7} {r.seconds:>8.2f} {r.fps:>9.0f}")
        fps[side] = sum(r.frames for r in rows) / sum(r.seconds for r in rows)
        sd = statistics.stdev(r.seconds for r in rows) if len(rows) > 1 else 0.0
        print(f"{side:<13} {'mean':>4} {'':>7} {'':>7} {statistics.mean(r.seconds for r in rows):>8.2f} "
              f"{fps[side]:>9.0f}   (sd {sd:.2f} s)")  # fmt: skip
    print("frames/s ratios: " + ", ".join(
        f"{a}/{b} {fps[a] / fps[b]:.2f}x"
        for a, b in (("torchrl", "rl_lightning"), ("rl_lightning", "plain"), ("torchrl", "plain"))
    ))  # fmt: skip
    return fps


def main() -> None:
    p = parser(__doc__, [0, 1, 2], 25_000, "torch.set_num_threads for all sides (default: the configs' 1)")
    p.add_argument("--only", choices=["ppo", "sac"], default=None, help="run one algorithm's comparison")
    p.add_argument(
        "--sac-frames", type=int, default=6_000, help="frames per SAC run (the PPO ones: --throughput-frames)"
    )
    args = p.parse_args()
    quiet()
    sys.path.insert(0, str(ROOT))  # the torchrl configs name examples.torchrl_ppo.TorchRLPPO, examples.torchrl_sac...
    ppo, sac = ppo_cartpole.load_hparams(ppo_cartpole.CONFIG), sac_pendulum.load_hparams(sac_pendulum.CONFIG)
    threads = args.threads if args.threads is not None else ppo["torch_threads"]
    if threads is not None:
        torch.set_num_threads(threads)
    print(
        f"torch {torch.__version__}, torchrl {torchrl.__version__}, {os.cpu_count()} CPUs, threads "
        f"{torch.get_num_threads()}, seeds {args.seeds}, evaluation off"
    )
    if args.only in (None, "ppo"):
        runners = ppo_runners(ppo, threads)
        warm = 2 * ppo["frames_per_batch"]
        results = compare_throughput(runners, args.seeds, args.throughput_frames, warm_frames=warm)
        report(
            f"PPO, {ppo['env_id']}, configs/ppo.yaml (num_envs={ppo['num_envs']}, frames_per_batch="
            f"{ppo['frames_per_batch']}, n_epochs={ppo['n_epochs']}, batch_size={ppo['batch_size']}, hidden_sizes="
            f"{ppo['hidden_sizes']}): {args.throughput_frames} frames per run",
            results,
            list(runners),
        )
        if args.profile:
            profile(runners, args.seeds[0], args.throughput_frames)
    if args.only in (None, "sac"):
        if args.sac_frames <= sac["init_random_frames"]:
            raise SystemExit(f"--sac-frames must exceed init_random_frames={sac['init_random_frames']}")
        runners = sac_runners(sac, threads)
        warm = sac["init_random_frames"] + 2 * sac["frames_per_batch"]
        results = compare_throughput(runners, args.seeds, args.sac_frames, warm_frames=warm)
        report(
            f"SAC, {sac['env_id']}, configs/sac.yaml (num_envs={sac['num_envs']}, frames_per_batch="
            f"{sac['frames_per_batch']}, batch_size={sac['batch_size']}, utd_ratio={sac['utd_ratio']}, "
            f"init_random_frames={sac['init_random_frames']}, hidden_sizes={sac['hidden_sizes']}): "
            f"{args.sac_frames} frames per run",
            results,
            list(runners),
        )
        if args.profile:
            profile(runners, args.seeds[0], args.sac_frames)


if __name__ == "__main__":
    main()

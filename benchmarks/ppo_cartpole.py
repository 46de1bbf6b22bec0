"""PPO on CartPole-v1: rl_lightning against a plain PyTorch loop that does the same computation, and against
stable-baselines3 (SB3) with the same hyperparameters.

    .venv/bin/python benchmarks/ppo_cartpole.py [--seeds 0 1 2] [--threads N] [--throughput-frames 50000] [--profile]

All sides read their hyperparameters from ``configs/ppo.yaml`` (PPO's and RLDataModule's defaults fill in
what the config leaves out) and evaluate alike (the deterministic policy, ``eval_episodes`` episodes on
``min(eval_envs, eval_episodes)`` envs after every ``val_check_interval``-th batch's update and after the last
one, each round's envs seeded as RLDataModule seeds them). The plain loop uses the same envs as rl_lightning
(``make_vec_env``, same-step autoreset, same seeds), the same network building blocks (built in the same
order, so a seed gives the same initial weights), the same GAE function and the same evaluation
(``collector.evaluate``): with a seed, its run is rl_lightning's step for step.

SB3 runs ``stable_baselines3.PPO("MlpPolicy", ...)`` as its users do, on its own envs (``make_vec_env``: a
``DummyVecEnv`` of ``Monitor``-wrapped envs, ``num_envs`` of them, env ``i`` seeded ``seed + i``), with the
arguments of ``sb3_ppo_kwargs``:

    n_steps = frames_per_batch / num_envs        batch_size = batch_size      n_epochs, gamma, gae_lambda
    clip_range = clip_epsilon                    clip_range_vf = clip_value       normalize_advantage, target_kl
    ent_coef = entropy_coef                      max_grad_norm (null: inf)        device = "cpu"
    vf_coef = value_coef / 2                     SB3's value loss is the MSE, rl_lightning's half the MSE
    learning_rate = lr                           with anneal_lr, linear to 0 over the run's frames, counted
                                                 before each batch as rl_lightning counts them
    net_arch = {pi: hidden_sizes, vf: hidden_sizes}, activation_fn = activation, ortho_init = True (rl_lightning's
    gains: sqrt(2) hidden, 0.01 action, 1 value, zero biases), optimizer_kwargs = {eps: optimizer_eps}

It evaluates with ``_sb3.Evaluation`` (SB3's ``evaluate_policy``, on the same schedule and env seeds). SB3
draws its random numbers in its own order, so its runs are not step for step the others': compare its means
over the seeds. What remains different is SB3's own way of doing the same work: Adam's default (for-loop)
implementation where rl_lightning's is fused; a value forward pass with every rollout step (rl_lightning: one
per batch); a truncated episode bootstrapped through its last reward (``+ gamma * V(final obs)``, the same
target); its logger recording every minibatch's losses (``.item()``); no checkpoints (rl_lightning writes its
config's at each evaluation, the plain loop none); and a stop takes effect one env step (``num_envs`` frames,
not counted) after the evaluation that passed the threshold.

Two metrics per side and seed:
  (a) solve: wall time and frames until the mean evaluation return passes the config's EarlyStopping
      threshold (475), or the config's frame budget is spent;
  (b) throughput: frames/s over ``--throughput-frames`` frames with evaluation off.
Each side's time includes making its envs and optimizer and, in (a), its evaluations: rl_lightning is timed
around ``trainer.fit`` of ``rl_lightning.build("configs/ppo.yaml", ...)``, as a user runs it (CSV logger and
checkpoints on, written to a temporary directory); the plain loop from after its networks are built (like
``build``) to its end; SB3 from making its envs to the end of ``learn``, which also times its constructor
building the networks (about 10 ms; SB3 builds them together with the optimizer).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import (
    ROOT,
    Result,
    compare,
    fit_rl_lightning,
    parser,
    print_ratios,
    profile,
    quiet,
    read_hparams,
    require,
    seed_all,
    table,
)
from _sb3 import DEVICE, learn, sb3
from torch import nn

from rl_lightning import PPO
from rl_lightning.collector import evaluate
from rl_lightning.data import evaluation_seed
from rl_lightning.encoders import FlatEncoder
from rl_lightning.envs import make_env, make_vec_env
from rl_lightning.functional import explained_variance, generalized_advantage_estimate
from rl_lightning.networks import ACTIVATIONS, make_action_head, mlp

CONFIG = ROOT / "configs" / "ppo.yaml"


def load_hparams(config: Path) -> dict[str, Any]:
    """PPO and RLDataModule defaults, overridden by the config's model/data init_args, plus eval settings."""
    cfg, hp = read_hparams(config, PPO)
    stops = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("EarlyStopping")]
    hp["threshold"] = stops[0]["init_args"]["stopping_threshold"]
    hp["torch_threads"] = cfg.get("torch_threads")
    # What the plain loop below implements (the config's CartPole setting); fail loudly otherwise.
    require(
        hp,
        {
            "share_network": False,
            "normalize_observations": False,
            "clip_value": None,
            "target_kl": None,
            "frame_skip": 1,
            "wrappers": None,
            "vectorization": "sync",
            "normalize_advantage": True,
        },
    )
    return hp


# --------------------------------------------------------------------------------------------------
# The plain loop (CleanRL style): no Trainer, no RLLoop, no hooks, no TensorDict.
# --------------------------------------------------------------------------------------------------


class Agent(nn.Module):
    """PPO's networks, built from the same blocks in the same order as ``rl_lightning.PPO.__init__``."""

    def __init__(self, obs_space, action_space, hidden_sizes: list[int], activation: str) -> None:
        super().__init__()
        self.encoder = FlatEncoder(obs_space)
        self.actor_body = mlp(self.encoder.out_features, hidden_sizes, activation)
        self.head = make_action_head(action_space, hidden_sizes[-1])
        self.critic = mlp(self.encoder.out_features, hidden_sizes, activation, out_features=1, out_gain=1.0)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.encoder(obs))


def run_plain(
    hp: dict[str, Any],
    seed: int,
    total_frames: int,
    evaluation: bool,
    sync_grads: Callable[[nn.Module], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Result:
    """The plain loop. ``sync_grads(agent)`` runs after every backward (``ppo_ddp.py`` all-reduces there);
    ``on_batch(frames)`` after every batch's update."""
    seed_all(seed)
    probe = make_env(hp["env_id"])
    agent = Agent(probe.observation_space, probe.action_space, list(hp["hidden_sizes"]), hp["activation"])
    probe.close()
    start = time.perf_counter()
    n, steps = hp["num_envs"], hp["frames_per_batch"] // hp["num_envs"]
    envs = make_vec_env(hp["env_id"], n)
    eval_envs = make_vec_env(hp["env_id"], min(hp["eval_envs"], hp["eval_episodes"]))
    optimizer = torch.optim.Adam(agent.parameters(), lr=hp["lr"], eps=hp["optimizer_eps"], fused=True)  # as PPO

    obs_shape = envs.single_observation_space.shape
    obs = torch.zeros((n, steps, *obs_shape))
    next_obs = torch.zeros((n, steps, *obs_shape))
    actions = torch.zeros((n, steps), dtype=torch.int64)
    log_probs = torch.zeros((n, steps))
    rewards = torch.zeros((n, steps, 1))
    terminated = torch.zeros((n, steps, 1), dtype=torch.bool)
    dones = torch.zeros((n, steps, 1), dtype=torch.bool)

    def greedy(o: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"action": agent.head.mode(agent.actor_body(agent.encoder(o)))}

    # RNG lockstep with rl_lightning: torch's DataLoader draws one number from the global generator whenever
    # an iterator is made (Lightning makes one for training and one per evaluation round). Drawing it here too
    # keeps sampled actions and minibatch orders identical, so with a seed both sides do the very same work.
    def dataloader_draw() -> None:
        torch.empty((), dtype=torch.int64).random_()

    dataloader_draw()
    current, _ = envs.reset(seed=seed)
    frames, eval_round, eval_return = 0, 0, None
    num_batches = math.ceil(total_frames / hp["frames_per_batch"])
    for batch in range(1, num_batches + 1):
        if hp["anneal_lr"]:  # as PPO.prepare_batch: progress counts the frames before this batch
            optimizer.param_groups[0]["lr"] = hp["lr"] * max(1.0 - frames / total_frames, 0.0)

        # Rollout: steps x num_envs transitions, laid out [num_envs, T] like rl_lightning's batches.
        with torch.no_grad():
            for t in range(steps):
                obs[:, t] = torch.from_numpy(current)
                action, log_prob = agent.head.sample(agent.actor_body(agent.encoder(obs[:, t])))
                actions[:, t], log_probs[:, t] = action, log_prob
                current, reward, term, trunc, info = envs.step(action.numpy())
                next_obs[:, t] = torch.from_numpy(current)
                for i in np.flatnonzero(term | trunc):  # same-step autoreset: the true final observation
                    next_obs[i, t] = torch.from_numpy(info["final_obs"][i])
                rewards[:, t, 0] = torch.from_numpy(reward)
                terminated[:, t, 0] = torch.from_numpy(term)
                dones[:, t, 0] = torch.from_numpy(term | trunc)
        frames += hp["frames_per_batch"]

        # GAE(lambda), values of obs and next obs in one forward pass (as PPO.prepare_batch).
        with torch.no_grad():
            values = agent.value(torch.cat([obs, next_obs]).flatten(0, 1)).reshape(2, n, steps, 1)
            advantages, value_targets = generalized_advantage_estimate(
                rewards, values[0], values[1], terminated, dones, hp["gamma"], hp["gae_lambda"]
            )
        b_obs, b_actions, b_log_probs = obs.flatten(0, 1), actions.flatten(0, 1), log_probs.flatten(0, 1)
        b_advantages, b_targets = advantages.flatten(0, 1), value_targets.flatten(0, 1)

        # n_epochs passes of shuffled minibatches, one Adam step each.
        for _ in range(hp["n_epochs"]):
            for mb in torch.randperm(n * steps).split(hp["batch_size"]):
                x = agent.encoder(b_obs[mb])
                new_log_prob, entropy = agent.head.log_prob_entropy(agent.actor_body(x), b_actions[mb])
                new_value = agent.critic(x)
                adv = b_advantages[mb].squeeze(-1)
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                log_ratio = new_log_prob - b_log_probs[mb]
                ratio = log_ratio.exp()
                clipped = ratio.clamp(1 - hp["clip_epsilon"], 1 + hp["clip_epsilon"])
                pg_loss = -torch.min(adv * ratio, adv * clipped).mean()
                v_loss = 0.5 * ((new_value - b_targets[mb]) ** 2).mean()
                entropy_loss = entropy.mean()
                loss = pg_loss + hp["value_coef"] * v_loss - hp["entropy_coef"] * entropy_loss
                with torch.no_grad():  # diagnostics, as CleanRL (and PPO.loss) compute them
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # noqa: F841
                    clip_frac = ((ratio - 1).abs() > hp["clip_epsilon"]).float().mean()  # noqa: F841

                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if sync_grads is not None:
                    sync_grads(agent)
                nn.utils.clip_grad_norm_(agent.parameters(), hp["max_grad_norm"])
                optimizer.step()
        explained_variance(values[0], value_targets)  # a diagnostic PPO computes per batch too
        if on_batch is not None:
            on_batch(frames)

        # Deterministic evaluation every val_check_interval batches and after the last one (as Lightning).
        if evaluation and (batch % hp["val_check_interval"] == 0 or batch == num_batches):
            eval_round += 1
            dataloader_draw()
            episodes = evaluate(eval_envs, greedy, hp["eval_episodes"], seed=evaluation_seed(seed, 0, eval_round))
            eval_return = episodes["episode_return"].mean().item()
            if eval_return > hp["threshold"]:  # EarlyStopping(mode="max") compares with torch.gt
                break
    envs.close()
    eval_envs.close()
    return Result("plain", seed, frames, time.perf_counter() - start, eval_return)


# --------------------------------------------------------------------------------------------------
# stable-baselines3 with the same hyperparameters, as its users run it.
# --------------------------------------------------------------------------------------------------


def sb3_ppo_kwargs(hp: dict[str, Any], total_frames: int) -> dict[str, Any]:
    """``stable_baselines3.PPO``'s arguments for the config's hyperparameters (the mapping of the docstring)."""
    lr, fpb = hp["lr"], hp["frames_per_batch"]
    learning_rate: float | Callable[[float], float] = lr
    if hp["anneal_lr"]:
        # rl_lightning anneals by the frames before the batch, SB3's progress_remaining counts the batch just
        # collected: adding one batch back gives the same rate for every batch.
        def learning_rate(progress_remaining: float) -> float:
            return lr * min(progress_remaining + fpb / total_frames, 1.0)

    return {
        "learning_rate": learning_rate,
        "n_steps": fpb // hp["num_envs"],
        "batch_size": hp["batch_size"],
        "n_epochs": hp["n_epochs"],
        "gamma": hp["gamma"],
        "gae_lambda": hp["gae_lambda"],
        "clip_range": hp["clip_epsilon"],
        "clip_range_vf": hp["clip_value"],
        "normalize_advantage": hp["normalize_advantage"],
        "ent_coef": hp["entropy_coef"],
        "vf_coef": hp["value_coef"] / 2,  # SB3's value loss is the MSE, rl_lightning's half of it
        "max_grad_norm": math.inf if hp["max_grad_norm"] is None else hp["max_grad_norm"],
        "target_kl": hp["target_kl"],
        "policy_kwargs": {
            "net_arch": {"pi": list(hp["hidden_sizes"]), "vf": list(hp["hidden_sizes"])},
            "activation_fn": ACTIVATIONS[hp["activation"]],
            "ortho_init": True,  # sqrt(2) hidden, 0.01 action, 1 value, zero biases: rl_lightning's gains
            "optimizer_kwargs": {"eps": hp["optimizer_eps"]},
        },
        "device": DEVICE,
    }


def run_sb3(hp: dict[str, Any], seed: int, total_frames: int, evaluation: bool) -> Result:
    """SB3's PPO (see :func:`_sb3.learn` for what is timed)."""
    threshold = hp["threshold"] if evaluation else None
    _, frames, seconds, eval_return = learn(
        hp, seed, total_frames, lambda envs: sb3.PPO("MlpPolicy", envs, seed=seed, **sb3_ppo_kwargs(hp, total_frames)),
        threshold,
    )  # fmt: skip
    return Result("sb3", seed, frames, seconds, eval_return)


def main() -> None:
    threads_help = "torch.set_num_threads for all sides (default: the config's torch_threads, 1)"
    args = parser(__doc__, [0, 1, 2], 50_000, threads_help).parse_args()
    quiet()
    hp = load_hparams(CONFIG)
    overrides: list[str] = []
    if args.threads is not None:  # rl_lightning gets it as --torch_threads, which build() applies to the process
        hp["torch_threads"] = args.threads
        overrides.append(f"--torch_threads={args.threads}")
    if hp["torch_threads"] is not None:
        torch.set_num_threads(hp["torch_threads"])
    print(
        f"torch {torch.__version__}, stable-baselines3 {sb3.__version__}, {os.cpu_count()} CPUs, "
        f"threads {torch.get_num_threads()} (--threads {args.threads}, config torch_threads "
        f"{load_hparams(CONFIG)['torch_threads']}), "
        f"config {CONFIG.relative_to(ROOT)}: num_envs={hp['num_envs']} frames_per_batch={hp['frames_per_batch']} "
        f"batch_size={hp['batch_size']} n_epochs={hp['n_epochs']} lr={hp['lr']} "
        f"total_frames={hp['total_frames']} eval every {hp['val_check_interval']} batches "
        f"({hp['eval_episodes']} episodes), stop at mean return > {hp['threshold']}"
    )

    sb3_args = {k: v for k, v in sb3_ppo_kwargs(hp, hp["total_frames"]).items() if k != "learning_rate"}
    schedule = "linear to 0 over the run's frames, by the frames before each batch" if hp["anneal_lr"] else "constant"
    print(f"stable-baselines3 PPO: learning_rate={hp['lr']} ({schedule}) {sb3_args}")

    runners = {
        "plain": partial(run_plain, hp),
        "rl_lightning": partial(fit_rl_lightning, CONFIG, extra_overrides=overrides),
        "sb3": partial(run_sb3, hp),
    }
    solve, throughput = compare(
        runners, args.seeds, hp["total_frames"], args.throughput_frames, warm_frames=2 * hp["frames_per_batch"]
    )
    a = table(
        f"(a) time to mean eval return > {hp['threshold']} (budget {hp['total_frames']} frames)",
        solve,
        hp["threshold"],
    )
    b = table(f"(b) throughput, {args.throughput_frames} frames, evaluation off", throughput, None)
    rl, pl = "rl_lightning", "plain"
    by = {(r.side, r.seed): r for r in solve}
    same = [
        s for s in args.seeds if (by[pl, s].frames, by[pl, s].eval_return) == (by[rl, s].frames, by[rl, s].eval_return)
    ]
    print(
        f"\nidentical solve runs (same frames and evaluation return, plain and rl_lightning): "
        f"{len(same)}/{len(args.seeds)} seeds"
    )
    solved = sum(r.eval_return is not None and r.eval_return > hp["threshold"] for r in solve if r.side == "sb3")
    print(
        f"sb3 draws its random numbers in its own order: its runs differ from the others' step by step, compare "
        f"its means over the {len(args.seeds)} seeds (solved in {solved})"
    )
    print_ratios(a, b, "solve", width=28)

    if args.profile:
        profile(runners, args.seeds[0], args.throughput_frames)


if __name__ == "__main__":
    main()

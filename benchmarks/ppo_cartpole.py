"""PPO on CartPole-v1: rl_lightning against a plain PyTorch loop that does the same computation.

    .venv/bin/python benchmarks/ppo_cartpole.py [--seeds 0 1 2] [--threads N] [--throughput-frames 50000]

Both sides read their hyperparameters from ``configs/ppo.yaml`` (PPO's and RLDataModule's defaults fill in
what the config leaves out) and use the same envs (``make_vec_env``, same-step autoreset, same seeds),
the same network building blocks (built in the same order, so a seed gives the same initial weights),
the same GAE function and the same evaluation (``collector.evaluate`` of the deterministic policy,
``eval_episodes`` episodes every ``val_check_interval`` batches, seeded as RLDataModule seeds it).

Two metrics per side and seed:
  (a) solve: wall time and frames until the mean evaluation return passes the config's EarlyStopping
      threshold (475), or the config's frame budget is spent;
  (b) throughput: frames/s over ``--throughput-frames`` frames with evaluation off.
rl_lightning is timed around ``trainer.fit`` of ``rl_lightning.build("configs/ppo.yaml", ...)``, as a user
runs it (CSV logger and checkpoints on, written to a temporary directory); the plain loop from after its
networks are built (like ``build``) to its end, so both timings include making the envs and the optimizer.
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
from torch import nn

from rl_lightning import PPO
from rl_lightning.collector import evaluate
from rl_lightning.data import evaluation_seed
from rl_lightning.envs import make_env, make_vec_env
from rl_lightning.functional import explained_variance, generalized_advantage_estimate
from rl_lightning.networks import ObservationEncoder, make_action_head, mlp

CONFIG = ROOT / "configs" / "ppo.yaml"


def load_hparams(config: Path) -> dict[str, Any]:
    """PPO and RLDataModule defaults, overridden by the config's model/data init_args, plus eval settings."""
    cfg, hp = read_hparams(config, PPO)
    stops = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("EarlyStopping")]
    hp["threshold"] = stops[0]["init_args"]["stopping_threshold"]
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
        self.encoder = ObservationEncoder(obs_space)
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
    optimizer = torch.optim.Adam(agent.parameters(), lr=hp["lr"], eps=hp["adam_eps"], fused=True)  # as PPO

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
            for mb in torch.randperm(n * steps).split(hp["minibatch_size"]):
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


def main() -> None:
    args = parser(__doc__, [0, 1, 2], 50_000, "torch.set_num_threads for both sides").parse_args()
    quiet()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hp = load_hparams(CONFIG)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"threads {torch.get_num_threads()} (--threads {args.threads}), "
        f"config {CONFIG.relative_to(ROOT)}: num_envs={hp['num_envs']} frames_per_batch={hp['frames_per_batch']} "
        f"minibatch_size={hp['minibatch_size']} n_epochs={hp['n_epochs']} lr={hp['lr']} "
        f"total_frames={hp['total_frames']} eval every {hp['val_check_interval']} batches "
        f"({hp['eval_episodes']} episodes), stop at mean return > {hp['threshold']}"
    )

    runners = {"plain": partial(run_plain, hp), "rl_lightning": partial(fit_rl_lightning, CONFIG)}
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
        f"\nidentical solve runs (same frames and evaluation return on both sides): {len(same)}/{len(args.seeds)} seeds"
    )
    print_ratios(a, b, "solve", width=28)

    if args.profile:
        profile(runners, args.seeds[0], args.throughput_frames)


if __name__ == "__main__":
    main()

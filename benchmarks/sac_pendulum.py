"""SAC on Pendulum-v1: rl_lightning against a plain PyTorch loop that does the same computation, and against
stable-baselines3 (SB3) with the same hyperparameters.

    .venv/bin/python benchmarks/sac_pendulum.py [--seeds 0 1] [--threads N] [--throughput-frames 6000] [--profile]

All sides read their hyperparameters from ``configs/sac.yaml`` (SAC's and RLDataModule's defaults fill in
what the config leaves out) and evaluate alike (the deterministic policy, ``eval_episodes`` episodes on
``min(eval_envs, eval_episodes)`` envs after every ``val_check_interval``-th batch's updates and after the
last batch, each round's envs seeded as RLDataModule seeds them). The plain loop uses the same envs as
rl_lightning (``make_vec_env``, same-step autoreset, same seeds), the same networks (a ``SAC`` module built
from the same hyperparameters after the same seeding, so a seed gives the same initial weights; the plain
loop uses only its ``nn`` parts), the same loss equations, optimizers and target updates, a replay buffer of
the same capacity and batch size, the same updates per batch, and the same evaluation
(``collector.evaluate``): with a seed, its run is rl_lightning's step for step.

SB3 runs ``stable_baselines3.SAC("MlpPolicy", ...)`` as its users do, on its own envs (``make_vec_env``: a
``DummyVecEnv`` of ``Monitor``-wrapped envs, ``num_envs`` of them, env ``i`` seeded ``seed + i``), with the
arguments of ``sb3_sac_kwargs``:

    learning_rate = lr                                     as it is
    buffer_size, batch_size, tau, gamma                    as they are
    train_freq = (frames_per_batch / num_envs, "step")     one batch of all num_envs envs
    gradient_steps = utd_ratio * frames_per_batch          the updates after each batch
    learning_starts = init_random_frames rounded up to     rl_lightning acts at random for whole batches and updates
        whole batches (1024 for the config's 1000)         from the first batch after them
    ent_coef = "auto_<init_alpha>"                         auto_alpha, starting at init_alpha
    target_entropy = target_entropy, or "auto"             -dim(A), rl_lightning's default
    target_update_interval = 1                             soft target update after every update
    net_arch = {pi: hidden_sizes, qf: hidden_sizes}, activation_fn = activation, 2 critics (SB3's default),
    device = "cpu"; then ``orthogonal_init_``: rl_lightning's initialization, which SB3 has no option for
    (orthogonal, gain sqrt(2) hidden, 1 for the critics' output, zero biases; the actor's output layers
    torch's default)

It evaluates with ``_sb3.Evaluation`` (SB3's ``evaluate_policy``, on the same schedule and env seeds). SB3
draws its random numbers in its own order, so its runs are not step for step the others': compare its means
over the seeds. What remains different is SB3's own way of doing the same work: three Adam optimizers
(default for-loop implementation) and three backward passes per update, the actor's loss taken through the
critics just updated (rl_lightning: one fused Adam and one backward pass, every loss from the same
parameters); the tanh log-probability correction as ``log(1 - tanh(u)**2 + 1e-6)`` (rl_lightning: the exact,
numerically stable form); replay samples drawn with numpy; its logger recording every update's losses
(``.item()``); no checkpoints (rl_lightning writes its config's at each evaluation, the plain loop none); and a
stop takes effect one env step (``num_envs`` frames, not counted) after the evaluation that passed the
threshold.

Two metrics per side and seed:
  (a) threshold: wall time and frames until the first evaluation whose mean return passes ``--threshold``
      (-200; rl_lightning stops with Lightning's ``EarlyStopping(stopping_threshold=...)``, which compares
      with ``>``), or the config's frame budget (``total_frames``) is spent;
  (b) throughput: frames/s and updates/s over ``--throughput-frames`` frames with evaluation off (the
      config's ``init_random_frames`` of uniform random actions included, as in a real run).
Each side's time includes making its envs and optimizer and, in (a), its evaluations: rl_lightning is timed
around ``trainer.fit`` of ``rl_lightning.build("configs/sac.yaml", ...)``, as a user runs it (CSV logger and
checkpoints on, written to a temporary directory); the plain loop from after its networks are built (like
``build``) to its end; SB3 from making its envs to the end of ``learn``, which also times its constructor
building the networks, optimizers and replay buffer, and ``orthogonal_init_`` (about 10 ms together).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
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

from rl_lightning import SAC
from rl_lightning.collector import evaluate
from rl_lightning.data import evaluation_seed
from rl_lightning.envs import make_env, make_vec_env
from rl_lightning.networks import ACTIVATIONS, forward_detached

CONFIG = ROOT / "configs" / "sac.yaml"
MODEL_ARGS = [
    n for n in inspect.signature(SAC.__init__).parameters if n not in ("self", "observation_space", "action_space")
]


def load_hparams(config: Path) -> dict[str, Any]:
    """SAC and RLDataModule defaults, overridden by the config's model/data init_args, plus eval settings."""
    cfg, hp = read_hparams(config, SAC)
    hp["torch_threads"] = cfg.get("torch_threads")
    # What the plain loop below implements (the config's Pendulum setting); fail loudly otherwise.
    require(
        hp,
        {
            "buffer_storage": "memory",
            "prioritized": False,
            "n_step": 1,
            "target_update_interval": 1,
            "auto_alpha": True,
            "max_grad_norm": None,
            "frame_skip": 1,
            "wrappers": None,
            "vectorization": "sync",
        },
    )
    return hp


# --------------------------------------------------------------------------------------------------
# The plain loop (CleanRL style): no Trainer, no RLLoop, no hooks, no TensorDict.
# --------------------------------------------------------------------------------------------------


def run_plain(hp: dict[str, Any], seed: int, total_frames: int, evaluation: bool, threshold: float) -> Result:
    seed_all(seed)
    probe = make_env(hp["env_id"])
    # The module only supplies its nn parts (same blocks, same init order, so the same initial weights).
    sac = SAC(probe.observation_space, probe.action_space, **{k: hp[k] for k in MODEL_ARGS})
    probe.close()
    encoder, actor_body, actor_head = sac.encoder, sac.actor_body, sac.actor_head
    critics, target_critics, log_alpha = sac.critics, sac.target_critics, sac.log_alpha
    low, high = sac.action_low, sac.action_high
    gamma, tau, target_entropy, batch_size = hp["gamma"], hp["tau"], sac.target_entropy, hp["batch_size"]

    start = time.perf_counter()
    n, fpb = hp["num_envs"], hp["frames_per_batch"]
    steps = fpb // n
    envs = make_vec_env(hp["env_id"], n)
    eval_envs = make_vec_env(hp["env_id"], min(hp["eval_envs"], hp["eval_episodes"]))
    optimizer = torch.optim.Adam(  # as SAC.configure_optimizers: one fused Adam, a parameter group each
        [
            {"params": [*actor_body.parameters(), *actor_head.parameters()], "lr": hp["lr"]},
            {"params": list(critics.parameters()), "lr": hp["lr"]},
            {"params": [log_alpha], "lr": hp["lr"]},
        ],
        fused=True,
    )
    online_params = [p.detach() for p in critics.parameters()]
    target_params = list(target_critics.parameters())

    # One collector batch, laid out [num_envs, T] like rl_lightning's, and the replay ring (flat, env-major).
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    obs = torch.zeros((n, steps, obs_dim))
    next_obs = torch.zeros((n, steps, obs_dim))
    actions = torch.zeros((n, steps, act_dim))
    rewards = torch.zeros((n, steps))
    terminated = torch.zeros((n, steps), dtype=torch.bool)
    capacity = hp["buffer_size"]
    ring = {
        "obs": torch.empty((capacity, obs_dim)),
        "action": torch.empty((capacity, act_dim)),
        "next_obs": torch.empty((capacity, obs_dim)),
        "reward": torch.empty(capacity),
        "terminated": torch.empty(capacity, dtype=torch.bool),
    }
    cursor, size = 0, 0

    def to_env_scale(unit: torch.Tensor) -> torch.Tensor:
        return low + (unit + 1.0) * 0.5 * (high - low)

    def q_values(nets: nn.ModuleList, x: torch.Tensor, a: torch.Tensor, detached: bool = False) -> torch.Tensor:
        inputs = torch.cat([x, a], dim=-1)
        return torch.stack([(forward_detached(c, inputs) if detached else c(inputs)).squeeze(-1) for c in nets])

    def greedy(o: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"action": to_env_scale(actor_head.mode(actor_body(encoder(o))))}

    # RNG lockstep with rl_lightning: torch's DataLoader draws one number from the global generator whenever
    # an iterator is made (Lightning makes one for training and one per evaluation round).
    def dataloader_draw() -> None:
        torch.empty((), dtype=torch.int64).random_()

    dataloader_draw()
    current, _ = envs.reset(seed=seed)
    frames, updates, eval_round, eval_return = 0, 0, 0, None
    num_batches = math.ceil(total_frames / fpb)
    random_batches = math.ceil(hp["init_random_frames"] / fpb)
    for batch in range(num_batches):
        # Rollout: uniform random actions in [low, high] until init_random_frames, then the stochastic actor.
        with torch.inference_mode():
            explore = frames < hp["init_random_frames"]
            for t in range(steps):
                obs[:, t] = torch.from_numpy(current)
                if explore:
                    unit = torch.rand((n, act_dim)) * 2 - 1
                else:
                    unit = actor_head.sample(actor_body(encoder(obs[:, t])))[0]
                action = to_env_scale(unit)
                actions[:, t] = action
                current, reward, term, trunc, info = envs.step(np.clip(action.numpy(), low.numpy(), high.numpy()))
                next_obs[:, t] = torch.from_numpy(current)
                for i in np.flatnonzero(term | trunc):  # same-step autoreset: the true final observation
                    next_obs[i, t] = torch.from_numpy(info["final_obs"][i])
                rewards[:, t] = torch.from_numpy(reward)
                terminated[:, t] = torch.from_numpy(term)
        frames += fpb

        # Replay ring: write the batch env-major at the cursor, wrapping around.
        index = torch.arange(cursor, cursor + fpb) % capacity
        for key, value in (
            ("obs", obs),
            ("action", actions),
            ("next_obs", next_obs),
            ("reward", rewards),
            ("terminated", terminated),
        ):
            ring[key].index_copy_(0, index, value.flatten(0, 1))
        cursor, size = (cursor + fpb) % capacity, min(size + fpb, capacity)

        # utd_ratio updates per collected transition once learning started (SAC.optim_batches).
        due = math.floor(hp["utd_ratio"] * (batch + 1 - random_batches) * fpb) - updates
        for _ in range(max(due, 0)):
            idx = torch.randint(size, (batch_size,))
            b_obs, b_next_obs = ring["obs"].index_select(0, idx), ring["next_obs"].index_select(0, idx)
            b_action, b_reward = ring["action"].index_select(0, idx), ring["reward"].index_select(0, idx)
            b_terminated = ring["terminated"].index_select(0, idx)

            features, next_features = encoder(b_obs), encoder(b_next_obs)
            alpha = log_alpha.exp()
            with torch.no_grad():  # twin-Q soft target from the target critics
                next_action, next_log_prob = actor_head.sample(actor_body(next_features))
                next_q = q_values(target_critics, next_features, next_action).min(0).values
                target = b_reward + gamma * (~b_terminated).float() * (next_q - alpha * next_log_prob)
            q = q_values(critics, features, 2.0 * (b_action - low) / (high - low) - 1.0)
            td_error = q - target
            loss_q = (0.5 * (td_error**2).sum(0)).mean()
            action, log_prob = actor_head.sample(actor_body(features))
            q_pi = q_values(critics, features, action, detached=True).min(0).values  # gradient to the actor only
            loss_actor = (alpha.detach() * log_prob - q_pi).mean()
            loss_alpha = -(log_alpha * (log_prob.detach() + target_entropy)).mean()
            with torch.no_grad():  # diagnostics SAC.loss computes too
                _ = -log_prob.mean(), q.mean()

            optimizer.zero_grad(set_to_none=True)
            (loss_actor + loss_q + loss_alpha).backward()
            optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(target_params, online_params, tau)
            updates += 1

        # Deterministic evaluation every val_check_interval batches and after the last one (as Lightning).
        if evaluation and ((batch + 1) % hp["val_check_interval"] == 0 or batch + 1 == num_batches):
            eval_round += 1
            dataloader_draw()
            episodes = evaluate(eval_envs, greedy, hp["eval_episodes"], seed=evaluation_seed(seed, 0, eval_round))
            eval_return = episodes["episode_return"].mean().item()
            if eval_return > threshold:  # EarlyStopping(mode="max") compares with torch.gt
                break
    envs.close()
    eval_envs.close()
    return Result("plain", seed, frames, time.perf_counter() - start, eval_return, updates)


# --------------------------------------------------------------------------------------------------
# rl_lightning, as a user runs it.
# --------------------------------------------------------------------------------------------------


def run_rl_lightning(hp: dict[str, Any], seed: int, total_frames: int, evaluation: bool, threshold: float) -> Result:
    """``fit_rl_lightning`` with the config's torch_threads and, with ``evaluation``, an EarlyStopping."""
    overrides: list[str] = []
    if hp["torch_threads"] is not None:
        overrides.append(f"--torch_threads={hp['torch_threads']}")
    if evaluation:  # stop at the first evaluation past the threshold, as a user would
        stop = {
            "class_path": "lightning.pytorch.callbacks.EarlyStopping",
            "init_args": {
                "monitor": "val/episode_return",
                "mode": "max",
                "stopping_threshold": threshold,
                "patience": 1_000_000,
            },
        }
        overrides.append(f"--trainer.callbacks+={json.dumps(stop)}")
    return fit_rl_lightning(CONFIG, seed, total_frames, evaluation, overrides)


# --------------------------------------------------------------------------------------------------
# stable-baselines3 with the same hyperparameters, as its users run it.
# --------------------------------------------------------------------------------------------------


def sb3_sac_kwargs(hp: dict[str, Any]) -> dict[str, Any]:
    """``stable_baselines3.SAC``'s arguments for the config's hyperparameters (the mapping of the docstring)."""
    fpb = hp["frames_per_batch"]
    gradient_steps = hp["utd_ratio"] * fpb
    if gradient_steps != int(gradient_steps):
        raise SystemExit(f"utd_ratio={hp['utd_ratio']} * frames_per_batch={fpb} is not a whole number of updates")
    hidden = list(hp["hidden_sizes"])
    return {
        "learning_rate": hp["lr"],
        "buffer_size": hp["buffer_size"],
        # rl_lightning acts at random for whole batches until init_random_frames and updates from the first
        # batch after: SB3 does the same with learning_starts rounded up to whole batches.
        "learning_starts": math.ceil(hp["init_random_frames"] / fpb) * fpb,
        "batch_size": hp["batch_size"],
        "tau": hp["tau"],
        "gamma": hp["gamma"],
        "train_freq": (fpb // hp["num_envs"], "step"),  # steps of all num_envs envs: one batch
        "gradient_steps": int(gradient_steps),
        "ent_coef": f"auto_{hp['init_alpha']}",
        "target_entropy": "auto" if hp["target_entropy"] is None else hp["target_entropy"],  # auto: -dim(A)
        "target_update_interval": 1,
        "policy_kwargs": {"net_arch": {"pi": hidden, "qf": hidden}, "activation_fn": ACTIVATIONS[hp["activation"]]},
        "device": DEVICE,
    }


def orthogonal_init_(model: Any) -> None:
    """rl_lightning's initialization of SAC's MLPs (``networks.mlp``), which SB3's SAC has no option for:
    orthogonal weights with gain sqrt(2) and zero biases for hidden layers, gain 1 for the critics' output
    layer; the actor's output layers keep torch's default, as in rl_lightning. The target critics get the
    critics' new weights."""
    policy = model.policy
    for net, out_gain in [(policy.actor.latent_pi, math.sqrt(2)), *((q, 1.0) for q in policy.critic.q_networks)]:
        linears = [layer for layer in net if isinstance(layer, nn.Linear)]
        for k, layer in enumerate(linears):
            nn.init.orthogonal_(layer.weight, out_gain if k == len(linears) - 1 else math.sqrt(2))
            nn.init.zeros_(layer.bias)
    policy.critic_target.load_state_dict(policy.critic.state_dict())


def run_sb3(hp: dict[str, Any], seed: int, total_frames: int, evaluation: bool, threshold: float) -> Result:
    """SB3's SAC with rl_lightning's initialization (see :func:`_sb3.learn` for what is timed)."""

    def build(envs: Any) -> Any:
        model = sb3.SAC("MlpPolicy", envs, seed=seed, **sb3_sac_kwargs(hp))
        orthogonal_init_(model)
        return model

    model, frames, seconds, eval_return = learn(hp, seed, total_frames, build, threshold if evaluation else None)
    return Result("sb3", seed, frames, seconds, eval_return, model._n_updates)  # SB3's gradient-step counter


def main() -> None:
    threads_help = "torch.set_num_threads for both sides (default: the config's torch_threads, 1)"
    p = parser(__doc__, [0, 1], 6_000, threads_help)
    p.add_argument("--threshold", type=float, default=-200.0, help="mean evaluation return to reach")
    args = p.parse_args()
    quiet()
    hp = load_hparams(CONFIG)
    if args.threads is not None:
        hp["torch_threads"] = args.threads  # rl_lightning gets it as --torch_threads, which build() applies
    if hp["torch_threads"] is not None:
        torch.set_num_threads(hp["torch_threads"])
    if args.throughput_frames <= hp["init_random_frames"]:
        raise SystemExit(f"--throughput-frames must exceed init_random_frames={hp['init_random_frames']}")
    print(
        f"torch {torch.__version__}, stable-baselines3 {sb3.__version__}, {os.cpu_count()} CPUs, "
        f"threads {torch.get_num_threads()} "
        f"(--threads {args.threads}, config torch_threads {load_hparams(CONFIG)['torch_threads']}), "
        f"config {CONFIG.relative_to(ROOT)}: num_envs={hp['num_envs']} frames_per_batch={hp['frames_per_batch']} "
        f"batch_size={hp['batch_size']} buffer_size={hp['buffer_size']} utd_ratio={hp['utd_ratio']} "
        f"init_random_frames={hp['init_random_frames']} hidden_sizes={hp['hidden_sizes']} "
        f"total_frames={hp['total_frames']} eval every {hp['val_check_interval']} batches "
        f"({hp['eval_episodes']} episodes), stop at mean return > {args.threshold}"
    )

    print(f"stable-baselines3 SAC (orthogonal init as rl_lightning's): {sb3_sac_kwargs(hp)}")

    runners = {
        "plain": partial(run_plain, hp, threshold=args.threshold),
        "rl_lightning": partial(run_rl_lightning, hp, threshold=args.threshold),
        "sb3": partial(run_sb3, hp, threshold=args.threshold),
    }
    warm_frames = hp["init_random_frames"] + 2 * hp["frames_per_batch"]
    solve, throughput = compare(runners, args.seeds, hp["total_frames"], args.throughput_frames, warm_frames)
    a = table(
        f"(a) time to mean eval return > {args.threshold} (budget {hp['total_frames']} frames)",
        solve,
        args.threshold,
        updates=True,
        reached="reached",
    )
    b = table(
        f"(b) throughput, {args.throughput_frames} frames ({hp['init_random_frames']} random), evaluation off",
        throughput,
        None,
        updates=True,
    )
    rl, pl = "rl_lightning", "plain"
    by = {(r.side, r.seed): r for r in solve}
    same_frames = [s for s in args.seeds if by[pl, s].frames == by[rl, s].frames]
    same_runs = [s for s in same_frames if by[pl, s].eval_return == by[rl, s].eval_return]
    print(
        f"\nframes to threshold match, plain and rl_lightning: {len(same_frames)}/{len(args.seeds)} seeds; "
        f"identical runs (same frames and last evaluation return): {len(same_runs)}/{len(args.seeds)} seeds"
    )
    reached = sum(r.eval_return is not None and r.eval_return > args.threshold for r in solve if r.side == "sb3")
    print(
        f"sb3 draws its random numbers in its own order: its runs differ from the others' step by step, compare "
        f"its means over the {len(args.seeds)} seeds (reached in {reached})"
    )
    print_ratios(a, b, "threshold", width=30, updates=True)

    if args.profile:
        profile(runners, args.seeds[0], args.throughput_frames)


if __name__ == "__main__":
    main()

"""rl_lightning against stable-baselines3 (SB3), algorithm by algorithm, with the hyperparameters of the shipped
configs: frames per second, and the time to a reward threshold.

    .venv/bin/python benchmarks/vs_sb3.py [--algorithms ppo ppo_atari a2c dqn sac td3 ddpg] [--seeds 0 1 2]
                                          [--threads N] [--throughput-frames N] [--profile]

Each algorithm reads its hyperparameters from ``configs/<algorithm>.yaml`` (``ppo_atari``: PPO on Pong from
``configs/ppo_atari.yaml``; the module's and RLDataModule's defaults fill in what the config leaves out), so the
benchmark runs what users run, with the config's ``torch_threads`` on both sides (``--threads`` overrides it).
rl_lightning runs as a user runs it: ``rl_lightning.build(config, overrides)`` and ``trainer.fit`` (the config's
CSV logger and checkpoints on, written to a temporary directory; progress bar off), timed around ``fit``. SB3 runs
its class with the arguments of the algorithm's mapping function below, on its own envs (``make_vec_env``: a
``DummyVecEnv`` of ``Monitor``-wrapped envs, ``num_envs`` of them, env ``i`` seeded ``seed + i``), each made as
RLDataModule makes its envs (``rl_lightning.envs.make_env`` with the config's ``env_id``, ``env_kwargs``,
``frame_skip``, ``wrappers`` and, for training, ``train_wrappers``: ``_sb3.make_envs``), timed from making its envs
to the end of ``learn`` (``_sb3.learn``).

Two metrics per algorithm, side and seed, in one process, the side that goes first alternating from seed to
seed (after an untimed warm-up run of each side):
  throughput: frames/s over the algorithm's ``--throughput-frames`` with evaluation off;
  time to threshold: wall time and frames until the deterministic evaluation's mean return passes the threshold
      (CartPole-v1: 475, Pendulum-v1: -200; compared with ``>``, as ``EarlyStopping(mode="max")``), within the
      config's ``total_frames``; not run for ``ppo_atari`` (Pong takes hours to learn on a CPU: throughput
      only). Both sides evaluate at the same frames: ``eval_episodes`` episodes on ``min(eval_envs,
      eval_episodes)`` envs after the update of every ``val_check_interval``-th batch and after
      the last one, each round's envs seeded as RLDataModule seeds them (``_sb3.Evaluation`` on the SB3 side;
      the config's ``EarlyStopping``, or one added with the threshold, on rl_lightning's).
The summary gives the medians over the seeds and the ratios rl_lightning/SB3 as speed-ups (> 1: rl_lightning is
faster): frames/s over SB3's frames/s, and SB3's time to the threshold over rl_lightning's, each the median over
the seeds of the ratio of that seed's two runs (which ran back to back, so that a change in the machine's load
between seeds cancels out). SB3 draws its random numbers in its own order, so the two sides' runs are not step for
step the same: their times to the threshold vary with the seed, the throughputs much less.

The mapping functions, config key -> SB3 argument (``hidden_sizes``, ``activation`` -> ``policy_kwargs``'
``net_arch`` and ``activation_fn`` everywhere; ``device="cpu"``):

PPO (``sb3_ppo_kwargs`` of ``ppo_cartpole.py``):
    n_steps = frames_per_batch / num_envs        batch_size, n_epochs, gamma, gae_lambda, normalize_advantage
    clip_range = clip_epsilon                    ent_coef = entropy_coef      max_grad_norm (null: inf)
    vf_coef = value_coef / 2                     SB3's value loss is the MSE, rl_lightning's half of it
    learning_rate = lr                           with anneal_lr linear to 0 over the run's frames, counted before
                                                 each batch as rl_lightning counts them
    ortho_init = True (rl_lightning's gains), optimizer_kwargs = {eps: optimizer_eps}
PPO on images (``ppo_atari``, ``sb3_ppo_cnn_kwargs``): PPO's mapping with SB3's ``CnnPolicy``, and
    cnn -> NatureCNN (features_extractor_kwargs = {features_dim: features}); other channels, kernel_sizes or
        strides than the Nature CNN's are refused, and so are images whose channels rl_lightning's encoder reads
        from another dimension than SB3 (``check_network``; [4, 84, 84] frame stacks are channels-first to both,
        so SB3 wraps no ``VecTransposeImage``); SB3 scales the uint8 images by 1/255 as rl_lightning
    share_network -> share_features_extractor   net_arch = {pi: hidden_sizes, vf: hidden_sizes}: with
        share_network, only hidden_sizes [] (SB3 2.x shares the CNN, not the layers after it)
    ortho_init = True: sqrt(2) for the CNN, 0.01 for the actor's head, 1 for the critic's, as rl_lightning
A2C (``sb3_a2c_kwargs``): as PPO for what they share (n_steps, learning_rate, gamma, gae_lambda, ent_coef,
    vf_coef = value_coef / 2, max_grad_norm, normalize_advantage, the networks), and
    use_rms_prop = (optimizer == "rmsprop")      SB3's RMSprop is torch's with alpha=0.99, as rl_lightning's
    rms_prop_eps = optimizer_eps                 (with Adam: optimizer_kwargs = {eps: optimizer_eps})
SAC (``sb3_sac_kwargs`` of ``sac_pendulum.py``), and n_steps = n_step:
    learning_rate = lr                           buffer_size, batch_size, tau, gamma
    train_freq = (frames_per_batch / num_envs, "step"), gradient_steps = utd_ratio * frames_per_batch
    learning_starts = init_random_frames rounded up to whole batches (rl_lightning acts at random for whole
        batches and updates from the first batch after them)
    ent_coef = "auto_<init_alpha>", target_entropy (null: "auto", -dim(A)), target_update_interval = 1
    then rl_lightning's orthogonal initialization, which SB3 has no option for (``orthogonal_init_``)
TD3 and DDPG (``sb3_td3_kwargs``, ``sb3_ddpg_kwargs``): as SAC for what they share (learning_rate, buffer_size,
    batch_size, tau, gamma, train_freq, gradient_steps, learning_starts, n_steps), and
    action_noise = NormalActionNoise(0, exploration_noise)
    policy_delay, target_policy_noise, target_noise_clip (TD3; SB3's DDPG has none of them, as rl_lightning's)
    No rescaling: SB3 2.9.2 adds the action noise to the action scaled to [-1, 1] and clips it there
    (``OffPolicyAlgorithm._sample_action``), and its target noise to the target actor's tanh output
    (``TD3.train``), the unit scale in which rl_lightning's TD3 adds both.
    then rl_lightning's initialization of the actor and critics (``td3_init_``)
DQN (``sb3_dqn_kwargs``): as SAC for what they share (train_freq = one batch, gradient_steps = utd_ratio *
    frames_per_batch, learning_starts, ...), and
    target_update_interval = target_update_interval / utd_ratio   rl_lightning counts updates, SB3 env steps
    exploration_fraction = exploration_frames / the run's frames   exploration_initial_eps, exploration_final_eps
    max_grad_norm (null: inf)                    loss: SB3's is the Huber loss (rl_lightning's loss="huber")
    then rl_lightning's initialization of the Q network (``dqn_init_``)

A config setting with no SB3 equivalent (e.g. ``share_network`` on an MLP, SAC's ``prioritized``, DQN's
``double_dqn``) stops the script with a message naming the key; so does a key this script does not know yet.
What stays different even with matched arguments is printed with each algorithm (``Algorithm.unmatched``); in
short, SB3's own way of doing the same work: Adam's for-loop implementation where rl_lightning's is fused, SAC's
three and TD3's two optimizers and backward passes, the logger recording every update's losses with ``.item()``,
DQN's ε decayed env step by env step (rl_lightning: batch by batch); rl_lightning's checkpoints at each
evaluation (SB3 writes none); and an SB3 stop takes effect one env step (``num_envs`` frames, not counted)
after the evaluation that passed the threshold.

stable-baselines3 is a benchmark dependency (the ``bench`` extra), never imported by rl_lightning.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from _harness import (
    ROOT,
    Result,
    Runner,
    compare,
    compare_throughput,
    early_stopping,
    fit_rl_lightning,
    parser,
    profile,
    quiet,
    read_hparams,
)
from _sb3 import NatureCNN, NormalActionNoise, is_image_space_channels_first, learn, mlp_init_, sb3
from ppo_cartpole import sb3_ppo_kwargs
from sac_pendulum import orthogonal_init_, sb3_sac_kwargs

import rl_lightning
from rl_lightning import RLDataModule
from rl_lightning.encoders import NATURE_CNN, ImageEncoder, is_image_space
from rl_lightning.envs import make_env
from rl_lightning.networks import ACTIVATIONS

Kwargs = Callable[[dict[str, Any], int], dict[str, Any]]  # (hyperparameters, the run's total frames) -> SB3's args
Fixed = dict[str, tuple[Any, str]]  # argument -> (the one value SB3 can match, why)

DATA_FIXED: Fixed = {
    "vectorization": ("sync", "SB3's side runs a DummyVecEnv"),
    "pixels": (False, "SB3's side runs its policy on the env's observations, not on rendered frames"),
}
DATA_MAPPED = (
    "env_id",
    "num_envs",
    "frames_per_batch",
    "total_frames",
    "seed",
    "eval_episodes",
    "eval_envs",
    # SB3's envs are made by rl_lightning.envs.make_env from these, as RLDataModule makes its own (_sb3.make_envs)
    "env_kwargs",
    "frame_skip",
    "wrappers",
    "train_wrappers",
)
DATA_IGNORED = ("stats_window",)  # what rl_lightning logs, not what it computes
NONFINITE = "nonfinite"  # acts only on NaN/inf gradients (none in these runs); SB3 has no such check
COMPILE: Fixed = {"compile": (False, "SB3 runs eager")}


@dataclass(frozen=True)
class Algorithm:
    """One row of the comparison: an rl_lightning algorithm, its env and threshold, and SB3's counterpart."""

    module: str  # rl_lightning's class, and SB3's of the same name
    env_id: str
    threshold: float | None  # None: throughput only (the time to a threshold is out of the benchmark's reach)
    throughput_frames: int  # the default of --throughput-frames
    kwargs: Kwargs  # the mapping
    mapped: tuple[str, ...]  # the model arguments the mapping reads, or that change nothing measured
    fixed: Fixed  # the model arguments SB3 has no equivalent for
    unmatched: tuple[str, ...]  # what stays different with the mapped arguments
    init: Callable[[Any], None] | None = None  # applied to the SB3 model after it is built
    policy: str = "MlpPolicy"  # SB3's policy class; "CnnPolicy" for image observations
    why_no_threshold: str = ""  # with threshold None, printed with the results


# --------------------------------------------------------------------------------------------------
# The mappings, config -> SB3's arguments.
# --------------------------------------------------------------------------------------------------


def sb3_a2c_kwargs(hp: dict[str, Any], total_frames: int) -> dict[str, Any]:
    """``stable_baselines3.A2C``'s arguments: what A2C shares with PPO maps as PPO's does (``sb3_ppo_kwargs``, given
    neutral values for PPO's own arguments, which are then left out), then the optimizer."""
    ppo_only = {"batch_size": 1, "n_epochs": 1, "clip_epsilon": 0.2, "clip_value": None, "target_kl": None}
    ppo = sb3_ppo_kwargs({**hp, **ppo_only}, total_frames)
    kwargs = {k: v for k, v in ppo.items() if k not in ("batch_size", "n_epochs", "clip_range", "clip_range_vf")}
    del kwargs["target_kl"]
    kwargs["use_rms_prop"] = hp["optimizer"] == "rmsprop"  # SB3 then makes torch's RMSprop(alpha=0.99, eps)
    kwargs["rms_prop_eps"] = hp["optimizer_eps"]
    return kwargs


def sb3_ppo_cnn_kwargs(hp: dict[str, Any], total_frames: int) -> dict[str, Any]:
    """``stable_baselines3.PPO("CnnPolicy")``'s arguments: ``sb3_ppo_kwargs``, and the network: SB3's
    ``NatureCNN`` (rl_lightning's ``ImageEncoder`` with the Nature CNN's convolutions, which :func:`load` checks)
    with ``features`` outputs, shared by the actor and the critic with ``share_network`` (SB3's
    ``share_features_extractor``), each head an MLP of ``hidden_sizes`` on the CNN's features."""
    if hp["share_network"] and hp["hidden_sizes"]:
        raise SystemExit(
            f"share_network=true with hidden_sizes={hp['hidden_sizes']}: rl_lightning shares the hidden layers too, "
            "SB3 2.x only the CNN; the comparison needs hidden_sizes [] with share_network"
        )
    kwargs = sb3_ppo_kwargs(hp, total_frames)
    features = {**NATURE_CNN, **(hp["cnn"] or {})}["features"]
    kwargs["policy_kwargs"].update(
        features_extractor_class=NatureCNN,  # ReLU convolutions and linear layer; images scaled by 1/255 as ours
        features_extractor_kwargs={"features_dim": features},
        share_features_extractor=hp["share_network"],
    )
    return kwargs


def spec_value(key: str) -> Any:
    """The Nature CNN's ``key`` (``rl_lightning.encoders.NATURE_CNN``)."""
    return dict(NATURE_CNN)[key]


def check_network(hp: dict[str, Any], algo: Algorithm) -> str | None:
    """Why the config's ``cnn`` cannot be compared with SB3's policy (``None`` if it can): an MLP policy needs
    observations that are not images (``cnn`` then has no effect); SB3's ``CnnPolicy`` is the Nature CNN, reading
    the image's channels from the dimension rl_lightning's encoder reads them from (SB3 transposes channels-last
    images with ``VecTransposeImage``)."""
    env = make_env(hp["env_id"], hp["wrappers"], hp["frame_skip"], env_kwargs=hp["env_kwargs"])
    space = env.observation_space
    env.close()
    if algo.policy == "MlpPolicy":
        if is_image_space(space):
            return f"observations {space} are images; the {algo.module} mapping runs SB3's MlpPolicy"
        return None
    if not (isinstance(space, gym.spaces.Box) and is_image_space(space) and len(space.shape) == 3):
        return f"SB3's CnnPolicy takes [C, H, W] or [H, W, C] uint8 images, not observations {space}"
    spec: dict[str, Any] = {**NATURE_CNN, **(hp["cnn"] or {})}
    for key in ("channels", "kernel_sizes", "strides"):
        if list(spec[key]) != spec_value(key):
            return f"SB3's NatureCNN has {key} {spec_value(key)}, not {spec[key]}"
    try:
        channels_last = ImageEncoder(space, hp["cnn"]).channels_last
    except ValueError as err:  # rl_lightning refuses the cnn itself
        return str(err)
    if channels_last != (not is_image_space_channels_first(space)):
        where = "last" if channels_last else "first"
        return f"rl_lightning reads the channels of {space.shape} {where} (cnn layout), SB3 the other dimension"
    return None


def off_policy_kwargs(hp: dict[str, Any]) -> dict[str, Any]:
    """The arguments SAC, TD3, DDPG and DQN share, mapped as ``sb3_sac_kwargs`` maps them (given neutral values for
    SAC's own arguments, which are then left out), and the n-step returns."""
    sac = sb3_sac_kwargs({**hp, "init_alpha": 1.0, "target_entropy": None})
    shared = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq")
    return {**{k: sac[k] for k in (*shared, "gradient_steps", "device")}, "n_steps": hp["n_step"]}


def sac_kwargs(hp: dict[str, Any], total_frames: int) -> dict[str, Any]:
    """``stable_baselines3.SAC``'s arguments: ``sb3_sac_kwargs`` of ``sac_pendulum.py``, and the n-step returns."""
    return {**sb3_sac_kwargs(hp), "n_steps": hp["n_step"]}


@functools.cache
def action_shape(env_id: str) -> tuple[int, ...]:
    env = gym.make(env_id)
    shape = env.action_space.shape
    env.close()
    assert shape is not None
    return shape


def sb3_ddpg_kwargs(hp: dict[str, Any], total_frames: int) -> dict[str, Any]:
    """``stable_baselines3.DDPG``'s arguments (SB3's DDPG is its TD3 with one critic, no target smoothing, no
    delay), and the exploration noise: both add it to the action in the unit scale [-1, 1] and clip there."""
    hidden = list(hp["hidden_sizes"])
    return {
        **off_policy_kwargs(hp),
        "action_noise": NormalActionNoise(np.zeros(action_shape(hp["env_id"])), hp["exploration_noise"]),
        "policy_kwargs": {"net_arch": {"pi": hidden, "qf": hidden}, "activation_fn": ACTIVATIONS[hp["activation"]]},
    }


def sb3_td3_kwargs(hp: dict[str, Any], total_frames: int) -> dict[str, Any]:
    """``stable_baselines3.TD3``'s arguments: DDPG's, and the three additions (in the unit scale, as the noise)."""
    return {
        **sb3_ddpg_kwargs(hp, total_frames),
        "policy_delay": hp["policy_delay"],
        "target_policy_noise": hp["target_policy_noise"],
        "target_noise_clip": hp["target_noise_clip"],
    }


def sb3_dqn_kwargs(hp: dict[str, Any], total_frames: int) -> dict[str, Any]:
    """``stable_baselines3.DQN``'s arguments: rl_lightning counts the target interval in updates, SB3 in env steps
    (the frames in which ``utd_ratio`` makes that many updates), and ε's decay in frames, SB3 as a fraction of the
    run's frames."""
    interval = hp["target_update_interval"] / hp["utd_ratio"]
    if interval != int(interval) or interval % hp["num_envs"]:
        raise SystemExit(
            f"target_update_interval={hp['target_update_interval']} updates at utd_ratio={hp['utd_ratio']} is "
            f"{interval:g} frames, not a whole number of steps of num_envs={hp['num_envs']} envs, as SB3 counts it"
        )
    return {
        **off_policy_kwargs(hp),
        "target_update_interval": int(interval),
        "exploration_fraction": hp["exploration_frames"] / total_frames,
        "exploration_initial_eps": hp["exploration_initial_eps"],
        "exploration_final_eps": hp["exploration_final_eps"],
        "max_grad_norm": math.inf if hp["max_grad_norm"] is None else hp["max_grad_norm"],
        "policy_kwargs": {"net_arch": list(hp["hidden_sizes"]), "activation_fn": ACTIVATIONS[hp["activation"]]},
    }


def td3_init_(model: Any) -> None:
    """rl_lightning's initialization of TD3's and DDPG's MLPs, applied to SB3's, copied to the targets."""
    policy = model.policy
    mlp_init_(policy.actor.mu, *policy.critic.q_networks)
    policy.actor_target.load_state_dict(policy.actor.state_dict())
    policy.critic_target.load_state_dict(policy.critic.state_dict())


def dqn_init_(model: Any) -> None:
    """rl_lightning's initialization of DQN's Q network, applied to SB3's, copied to the target."""
    mlp_init_(model.policy.q_net.q_net)
    model.policy.q_net_target.load_state_dict(model.policy.q_net.state_dict())


ON_POLICY_MAPPED = (
    "lr",
    "anneal_lr",
    "optimizer_eps",
    "gamma",
    "gae_lambda",
    "value_coef",
    "entropy_coef",
    "normalize_advantage",
    "max_grad_norm",
    "hidden_sizes",
    "activation",
    "cnn",  # checked by check_network
    NONFINITE,
)
ON_POLICY_FIXED: Fixed = {
    "share_network": (False, "SB3 2.x builds separate actor and critic MLPs"),
    "normalize_observations": (False, "SB3 normalizes with the VecNormalize env wrapper, not in the policy"),
    "log_std_init": (0.0, "SB3's default; the envs here have discrete actions"),
    **COMPILE,
}
OFF_POLICY_MAPPED = (
    "lr",
    "gamma",
    "batch_size",
    "buffer_size",
    "init_random_frames",
    "utd_ratio",
    "tau",
    "n_step",
    "hidden_sizes",
    "activation",
    "priority_alpha",  # unused without prioritized replay
    "priority_beta",
    "observation_dtype",  # the envs' observations are float32 either way, as SB3 stores them
    "cnn",  # checked by check_network: no effect on these envs' observations
    NONFINITE,
)
OFF_POLICY_FIXED: Fixed = {
    "buffer_storage": ("memory", "SB3's replay buffer is in memory"),
    "buffer_dir": (None, "SB3's replay buffer is in memory"),
    "prioritized": (False, "SB3 has no prioritized replay"),
    **COMPILE,
}
ACTOR_CRITIC_FIXED: Fixed = {  # SAC, TD3, DDPG
    **OFF_POLICY_FIXED,
    "actor_lr": (None, "SB3 has one learning rate (lr) for the actor and the critics"),
    "critic_lr": (None, "SB3 has one learning rate (lr) for the actor and the critics"),
    "max_grad_norm": (None, "SB3's SAC, TD3 and DDPG do not clip gradients"),
}
LOGGER = "SB3's logger records every update's losses (.item())"
TD3_UNMATCHED = (
    "SB3: two Adam optimizers (for-loop), a backward pass each on the actor's updates; rl_lightning: one fused Adam, "
    "one backward pass",
    "rl_lightning evaluates the actor's loss on every update for its log (no gradient between the policy updates); "
    "SB3 only on the policy updates",
    "SB3 draws the exploration noise with numpy, env by env",
    LOGGER,
)

PPO_FIXED: Fixed = {
    **ON_POLICY_FIXED,
    "optimizer": ("adam", "the PPO mapping gives SB3 its default Adam"),
    "clip_value": (None, "SB3's clip_range_vf clips the value alone, rl_lightning takes the larger loss"),
    "target_kl": (None, "SB3 stops at 1.5 x target_kl per minibatch, rl_lightning at target_kl per epoch"),
}
PPO_UNMATCHED = (
    "Adam: rl_lightning's fused, SB3's for-loop implementation",
    "SB3 computes values with every rollout step, rl_lightning once per batch",
    LOGGER,
)

ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm(
        module="PPO",
        env_id="CartPole-v1",
        threshold=475.0,
        throughput_frames=20_480,
        kwargs=sb3_ppo_kwargs,
        mapped=(*ON_POLICY_MAPPED, "n_epochs", "batch_size", "clip_epsilon"),
        fixed=PPO_FIXED,
        unmatched=PPO_UNMATCHED,
    ),
    "ppo_atari": Algorithm(
        module="PPO",
        env_id="ALE/Pong-v5",
        threshold=None,
        throughput_frames=8_192,
        kwargs=sb3_ppo_cnn_kwargs,
        mapped=(*ON_POLICY_MAPPED, "n_epochs", "batch_size", "clip_epsilon", "share_network"),
        fixed={k: v for k, v in PPO_FIXED.items() if k != "share_network"},
        unmatched=(
            *PPO_UNMATCHED,
            "SB3's rollout buffer stores the uint8 frames as float32 (4x the bytes), rl_lightning's batches as uint8",
            "SB3's Monitor wraps each whole training env (EpisodicLife, ClipReward included); it only records",
        ),
        policy="CnnPolicy",
        why_no_threshold="Pong takes millions of frames (hours on a CPU) to learn: frames/s only",
    ),
    "a2c": Algorithm(
        module="A2C",
        env_id="CartPole-v1",
        threshold=475.0,
        throughput_frames=81_920,
        kwargs=sb3_a2c_kwargs,
        mapped=(*ON_POLICY_MAPPED, "optimizer"),
        fixed=ON_POLICY_FIXED,
        unmatched=("SB3 computes values with every rollout step, rl_lightning once per batch", LOGGER),
    ),
    "dqn": Algorithm(
        module="DQN",
        env_id="CartPole-v1",
        threshold=475.0,
        throughput_frames=10_240,
        kwargs=sb3_dqn_kwargs,
        mapped=(
            *OFF_POLICY_MAPPED,
            "target_update_interval",
            "exploration_initial_eps",
            "exploration_final_eps",
            "exploration_frames",
            "max_grad_norm",
        ),
        fixed={
            **OFF_POLICY_FIXED,
            "double_dqn": (False, "SB3's DQN has no double Q-learning"),
            "dueling": (False, "SB3's DQN has no dueling head"),
            "loss": ("huber", "SB3's DQN trains on the Huber loss"),
        },
        unmatched=(
            "ε: rl_lightning's follows the frames batch by batch, SB3's env step by env step",
            "Adam: rl_lightning's fused, SB3's for-loop implementation",
            "SB3 updates the target network while collecting, after the batch's last step (rl_lightning after "
            "the batch's last update): the same updates see the same targets",
            "n-step returns: SB3 sums them when sampling and cuts the newest transitions' windows at the buffer's "
            "head; rl_lightning stores a transition once its window is complete",
            LOGGER,
        ),
        init=dqn_init_,
    ),
    "sac": Algorithm(
        module="SAC",
        env_id="Pendulum-v1",
        threshold=-200.0,
        throughput_frames=3_008,
        kwargs=sac_kwargs,
        mapped=(*OFF_POLICY_MAPPED, "init_alpha", "target_entropy"),
        fixed={
            **ACTOR_CRITIC_FIXED,
            "alpha_lr": (None, "SB3's SAC has one learning rate (lr)"),
            "target_update_interval": (1, "the SAC mapping updates SB3's targets after every update"),
            "auto_alpha": (True, "the SAC mapping tunes SB3's temperature"),
        },
        unmatched=(
            "SB3: three Adam optimizers (for-loop) and three backward passes per update, the actor's loss through "
            "the critics just updated; rl_lightning: one fused Adam, one backward pass",
            "SB3's tanh correction log(1 - tanh(u)^2 + 1e-6), rl_lightning's exact form",
            "SB3 samples replay indices with numpy",
            LOGGER,
        ),
        init=orthogonal_init_,
    ),
    "td3": Algorithm(
        module="TD3",
        env_id="Pendulum-v1",
        threshold=-200.0,
        throughput_frames=3_008,
        kwargs=sb3_td3_kwargs,
        mapped=(*OFF_POLICY_MAPPED, "policy_delay", "target_policy_noise", "target_noise_clip", "exploration_noise"),
        fixed=ACTOR_CRITIC_FIXED,
        unmatched=TD3_UNMATCHED,
        init=td3_init_,
    ),
    "ddpg": Algorithm(
        module="DDPG",
        env_id="Pendulum-v1",
        threshold=-200.0,
        throughput_frames=3_008,
        kwargs=sb3_ddpg_kwargs,
        mapped=(*OFF_POLICY_MAPPED, "exploration_noise"),
        fixed=ACTOR_CRITIC_FIXED,
        unmatched=(TD3_UNMATCHED[0], *TD3_UNMATCHED[2:]),
        init=td3_init_,
    ),
}


# --------------------------------------------------------------------------------------------------
# Reading a config, and refusing what cannot be mapped.
# --------------------------------------------------------------------------------------------------


def module_class(name: str) -> type:
    """rl_lightning's algorithm class ``name``; exits if the package does not have it."""
    cls = getattr(rl_lightning, name, None)
    if cls is None:
        raise SystemExit(f"rl_lightning has no {name} (rl_lightning/algorithms/{name.lower()}.py): leave it out")
    return cls


def load(name: str) -> tuple[Algorithm, Path, dict[str, Any], list[str]]:
    """The algorithm, its config, the hyperparameters (defaults filled in) and the overrides its rl_lightning
    threshold runs need; exits with a message naming the config key if the config uses a setting the SB3
    mapping cannot reproduce."""
    algo = ALGORITHMS[name]
    config = ROOT / "configs" / f"{name}.yaml"
    if not config.exists():
        raise SystemExit(f"{config.relative_to(ROOT)} does not exist: leave {name} out of --algorithms")
    cls = module_class(algo.module)
    cfg, hp = read_hparams(config, cls)
    where = config.relative_to(ROOT)

    def refuse(key: str, value: Any, why: str) -> SystemExit:
        return SystemExit(f"{where}: {key}={value!r} cannot be compared with stable-baselines3: {why}")

    model_args = [n for n in inspect.signature(cls).parameters if n not in ("observation_space", "action_space")]
    for arg in model_args:
        if arg not in algo.mapped and arg not in algo.fixed:
            raise refuse(
                f"model.init_args.{arg}",
                hp[arg],
                f"benchmarks/vs_sb3.py does not know this {algo.module} argument; add it to ALGORITHMS[{name!r}] "
                "(mapped to an SB3 argument, or fixed to the value SB3 matches)",
            )
    for table, prefix in ((algo.fixed, "model.init_args"), (DATA_FIXED, "data")):
        for arg, (value, why) in table.items():
            if hp[arg] != value:
                raise refuse(f"{prefix}.{arg}", hp[arg], f"{why}; the comparison needs {arg}={value!r}")
    for arg in inspect.signature(RLDataModule).parameters:
        if arg not in DATA_MAPPED and arg not in DATA_IGNORED and arg not in DATA_FIXED:
            raise refuse(f"data.{arg}", hp[arg], "benchmarks/vs_sb3.py does not know this RLDataModule argument")
    if hp["env_id"] != algo.env_id:
        what = "benchmark" if algo.threshold is None else f"threshold ({algo.threshold})"
        raise refuse("data.env_id", hp["env_id"], f"the {name} {what} is for {algo.env_id}")
    network = check_network(hp, algo)
    if network is not None:
        raise refuse("model.init_args.cnn", hp["cnn"], network)
    trainer = cfg.get("trainer", {})
    for arg, value in (("accelerator", "cpu"), ("devices", 1)):
        if trainer.get(arg, value) != value:
            raise refuse(
                f"trainer.{arg}", trainer[arg], f"SB3 runs one process on the CPU; the comparison needs {arg}={value!r}"
            )

    hp["torch_threads"] = cfg.get("torch_threads")
    algo.kwargs(hp, hp["total_frames"])  # the mapping's own refusals, before anything runs
    if algo.threshold is None:  # throughput only
        return algo, config, hp, []
    # rl_lightning stops at the threshold with the config's EarlyStopping, or with one added to it.
    stops = [c for c in trainer.get("callbacks", []) if c["class_path"].endswith("EarlyStopping")]
    if not stops:
        return algo, config, hp, [early_stopping(algo.threshold)]
    stop = stops[0].get("init_args", {})
    wanted = {"monitor": "val/episode_return", "mode": "max", "stopping_threshold": algo.threshold}
    for arg, value in wanted.items():
        if stop.get(arg) != value:
            raise refuse(
                f"trainer.callbacks[EarlyStopping].init_args.{arg}", stop.get(arg), f"the comparison needs {value!r}"
            )
    return algo, config, hp, []


# --------------------------------------------------------------------------------------------------
# The two sides.
# --------------------------------------------------------------------------------------------------


def run_sb3(algo: Algorithm, hp: dict[str, Any], seed: int, total_frames: int, evaluation: bool) -> Result:
    """SB3's class with the mapped arguments (see :func:`_sb3.learn` for what is timed)."""

    def build(envs: Any) -> Any:
        model = getattr(sb3, algo.module)(algo.policy, envs, seed=seed, **algo.kwargs(hp, total_frames))
        if algo.init is not None:
            algo.init(model)
        return model

    threshold = algo.threshold if evaluation else None
    model, frames, seconds, eval_return = learn(hp, seed, total_frames, build, threshold)
    return Result("sb3", seed, frames, seconds, eval_return, getattr(model, "_n_updates", 0))


def run_rl_lightning(
    config: Path, overrides: list[str], stop: list[str], seed: int, total_frames: int, evaluation: bool
) -> Result:
    """``build`` and ``trainer.fit`` as a user runs them; the threshold runs stop at the threshold. Lightning's
    model summary is rendered (timed) as for a user, but not shown."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fit_rl_lightning(config, seed, total_frames, evaluation, [*overrides, *(stop if evaluation else [])])


# --------------------------------------------------------------------------------------------------
# Reports.
# --------------------------------------------------------------------------------------------------


SIDES = ("rl_lightning", "sb3")


@dataclass
class Runs:
    """One algorithm's timed runs."""

    algo: Algorithm
    throughput_frames: int
    threads: int
    solve: list[Result]  # to the threshold; none for a throughput-only algorithm
    throughput: list[Result]

    def reached(self, r: Result) -> bool:
        threshold = self.algo.threshold
        return threshold is not None and r.eval_return is not None and r.eval_return > threshold

    def median(self, results: list[Result], side: str, value: Callable[[Result], float]) -> float:
        return statistics.median(value(r) for r in results if r.side == side)

    @staticmethod
    def ratio(results: list[Result], speed: Callable[[Result], float]) -> float:
        """The median over the seeds of each seed's ``speed`` ratio rl_lightning / SB3: the two runs of a seed ran
        back to back, so a change in the machine's load between seeds cancels out."""
        by = {(r.side, r.seed): r for r in results}
        seeds = sorted({r.seed for r in results})
        return statistics.median(speed(by["rl_lightning", s]) / speed(by["sb3", s]) for s in seeds)

    def print(self) -> None:
        print(f"\n{'side':<13} {'seed':>4} {'run':<10} {'frames':>7} {'seconds':>8} {'frames/s':>9} eval return")
        for kind, results in (("threshold", self.solve), ("throughput", self.throughput)):
            for r in results:
                line = f"{r.side:<13} {r.seed:>4} {kind:<10} {r.frames:>7} {r.seconds:>8.2f} {r.fps:>9.0f}"
                if r.eval_return is not None:
                    line += f" {r.eval_return:>11.1f}" + ("" if self.reached(r) else " (not reached)")
                print(line)
        if self.algo.threshold is None:
            print(f"no threshold runs: {self.algo.why_no_threshold}")

    def row(self) -> tuple[str, bool]:
        """The summary table's row (medians over the seeds), and whether every threshold run reached it."""
        fps = {s: self.median(self.throughput, s, lambda r: r.fps) for s in SIDES}
        cells = [
            self.algo.module,
            self.algo.env_id + ("" if self.algo.threshold is None else f", {self.algo.threshold:g}"),
            str(self.threads),
            *(f"{fps[s]:,.0f}" for s in SIDES),
            f"**{self.ratio(self.throughput, lambda r: r.fps):.2f}x**",
        ]
        if not self.solve:
            return "| " + " | ".join([*cells, "not run", "not run", "-"]) + " |", True
        seconds = {s: self.median(self.solve, s, lambda r: r.seconds) for s in SIDES}
        frames = {s: self.median(self.solve, s, lambda r: r.frames) for s in SIDES}
        reached = {s: sum(self.reached(r) for r in self.solve if r.side == s) for s in SIDES}
        runs = len(self.solve) // len(SIDES)
        complete = all(n == runs for n in reached.values())
        cells += [
            *(f"{seconds[s]:.1f} s, {frames[s]:,.0f} frames ({reached[s]}/{runs})" for s in SIDES),
            f"**{self.ratio(self.solve, lambda r: 1 / r.seconds):.2f}x**" + ("" if complete else " *"),
        ]
        return "| " + " | ".join(cells) + " |", complete


def print_summary(runs: list[Runs], seeds: list[int]) -> None:
    """The per-algorithm table (Markdown): medians over the seeds; ratios > 1: rl_lightning is faster."""
    frames = ", ".join(f"{r.algo.module} on {r.algo.env_id} {r.throughput_frames:,}" for r in runs)
    print(
        f"\nMedians over seeds {' '.join(map(str, seeds))}, with the torch threads of each row on both sides. Frames/s "
        f"with evaluation off ({frames} frames). Ratios: the median over the seeds of each seed's rl_lightning / SB3 "
        "frames/s and SB3 / rl_lightning time to the threshold (> 1: rl_lightning is faster).\n"
    )
    print(
        "| algorithm | env, threshold | torch threads | rl_lightning frames/s | SB3 frames/s | ratio "
        "| rl_lightning to threshold (reached) | SB3 to threshold (reached) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [r.row() for r in runs]
    for line, _ in rows:
        print(line)
    if not all(complete for _, complete in rows):
        print(
            "\n* some runs did not pass the threshold within the config's total_frames: counted with their whole time"
        )
    for r in runs:
        if r.algo.threshold is None:
            print(f"\n{r.algo.module} on {r.algo.env_id}: no threshold runs ({r.algo.why_no_threshold})")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    threads_help = (
        "torch.set_num_threads for both sides (rl_lightning gets it as --torch_threads); default: each config's "
        "torch_threads, 1 where it has none"
    )
    p = parser(__doc__, [0, 1, 2], 0, threads_help)
    p.set_defaults(throughput_frames=None)
    p.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS), help="default: all")
    args = p.parse_args()
    quiet()
    loaded = [load(name) for name in args.algorithms]  # refuse a config that cannot be mapped before anything runs
    print(
        f"torch {torch.__version__}, stable-baselines3 {sb3.__version__}, {os.cpu_count()} CPUs, "
        f"seeds {args.seeds}, load average {load_average()}"
    )
    results = []
    for algo, config, hp, stop in loaded:
        threads = args.threads or hp["torch_threads"] or 1
        torch.set_num_threads(threads)  # SB3's side; rl_lightning's build sets it from --torch_threads
        frames = args.throughput_frames or algo.throughput_frames
        sb3_args = algo.kwargs(hp, hp["total_frames"])
        sb3_args = {k: "<lr, linear to 0>" if callable(v) else v for k, v in sb3_args.items()}
        threshold = "throughput only" if algo.threshold is None else f"threshold {algo.threshold:g}"
        print(
            f"\n=== {algo.module} on {algo.env_id}: {config.relative_to(ROOT)}, {threshold}, {threads} torch "
            f"thread(s), load average {load_average()} ==="
        )
        init = "" if algo.init is None else f", then {algo.init.__name__}"
        print(f"stable-baselines3 {algo.module}({algo.policy!r}, {sb3_args}){init}")
        for line in algo.unmatched:
            print(f"  not matched: {line}")
        runners: dict[str, Runner] = {
            "rl_lightning": partial(run_rl_lightning, config, [f"--torch_threads={threads}"], stop),
            "sb3": partial(run_sb3, algo, hp),
        }
        fpb = hp["frames_per_batch"]
        warm = (math.ceil(hp.get("init_random_frames", 0) / fpb) + 2) * fpb  # two batches of updates
        if algo.threshold is None:
            solve: list[Result] = []
            throughput = compare_throughput(runners, args.seeds, frames, warm)
        else:
            solve, throughput = compare(runners, args.seeds, hp["total_frames"], frames, warm)
        results.append(Runs(algo, frames, threads, solve, throughput))
        results[-1].print()
        if args.profile:
            profile(runners, args.seeds[0], frames)
    print_summary(results, args.seeds)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()

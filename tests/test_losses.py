"""PPO's and SAC's loss terms against hand computations on a few transitions.

Each test builds a tiny model, writes a batch of 4 to 6 transitions with chosen numbers, and compares one term
of ``model.loss(batch)`` with the formula of the paper, evaluated on network outputs taken independently of
the loss code (the networks' layers called directly, the distributions from ``torch.distributions``, the
tanh correction in the paper's form).

PPO (Schulman et al., 2017), with ratio ``r = pi(a|s) / pi_old(a|s)`` and advantage ``A``:

- ``loss_objective = -mean(min(r * A, clip(r, 1 - eps, 1 + eps) * A))``; with ``normalize_advantage``, ``A`` is
  first normalized over the minibatch: ``(A - mean(A)) / (std(A) + 1e-8)``, ``std`` with Bessel's correction.
- ``loss_critic = value_coef * 0.5 * mean((V - target) ** 2)``; with ``clip_value``, the squared error is the
  larger of the unclipped one and that of ``V_old + clip(V - V_old, -clip_value, clip_value)``.
- ``loss_entropy = -entropy_coef * mean(H(pi(.|s)))``.
- ``approx_kl = mean((r - 1) - log r)``, ``clip_fraction = mean(|r - 1| > eps)``.

SAC (Haarnoja et al., 2018), with twin critics ``Q_1, Q_2``, their targets ``Q'_1, Q'_2`` and temperature
``alpha``:

- ``y = r + discount * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s'))``, ``a' ~ pi(.|s')``,
  ``discount = gamma ** k`` for a ``k``-step transition; truncated transitions bootstrap, terminated ones do not.
- ``loss_qvalue = mean_b(w_b * 0.5 * sum_i (Q_i(s, a) - y) ** 2)``, ``w`` the importance weights of prioritized
  replay (1 without), and ``td_error = mean_i |Q_i(s, a) - y|`` written to the batch when prioritized.
- ``loss_actor = mean(alpha * log pi(a~|s) - min_i Q_i(s, a~))``, ``a~ ~ pi(.|s)``.
- ``loss_alpha = -mean(log_alpha * (log pi(a~|s) + target_entropy))``, only with ``auto_alpha``.

SAC's loss draws its actions with torch's global generator, the next actions' noise first, then the current
ones'. The hand computations re-seed the generator and draw the same noise.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch import distributions as D
from torch import nn

from rl_lightning import PPO, SAC
from rl_lightning.networks import CategoricalHead, GaussianHead

OBSERVATIONS = gym.spaces.Box(-1.0, 1.0, (3,))
DISCRETE = gym.spaces.Discrete(2)
BOX = gym.spaces.Box(-1.0, 1.0, (2,))
# Asymmetric bounds: the critics see actions rescaled to [-1, 1], which a wrong rescaling would get wrong.
SAC_ACTIONS = gym.spaces.Box(np.array([-1.0, 0.0], dtype=np.float32), np.array([3.0, 1.0], dtype=np.float32))


def scramble(model: nn.Module) -> None:
    """Random parameters instead of the initial ones.

    Fresh networks sit at special points (zero biases, near-uniform policy logits, target critics equal to the
    critics) where a wrong formula can still give the right number.
    """
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name != "log_alpha":
                parameter.copy_(torch.randn_like(parameter) * 0.5)


# -- PPO ---------------------------------------------------------------------------------------------------

# Six samples, one per case of the clipped surrogate (eps = 0.2); per sample min(r * A, clip(r) * A):
#   r = 1.5, A =  2: min( 3.0,  2.4) =  2.4  clipped on the high side
#   r = 0.6, A =  1: min( 0.6,  0.8) =  0.6  below the range, but the unclipped term is the smaller
#   r = 1.1, A =  4: min( 4.4,  4.4) =  4.4  inside the range
#   r = 0.9, A = -1: min(-0.9, -0.9) = -0.9  inside the range
#   r = 1.5, A = -2: min(-3.0, -2.4) = -3.0  above the range, but the unclipped term is the smaller
#   r = 0.6, A = -3: min(-1.8, -2.4) = -2.4  clipped on the low side
RATIO = [1.5, 0.6, 1.1, 0.9, 1.5, 0.6]
ADVANTAGE = [2.0, 1.0, 4.0, -1.0, -2.0, -3.0]
SURROGATE = [2.4, 0.6, 4.4, -0.9, -3.0, -2.4]
CLIP_EPSILON = 0.2

# Value clipping with clip_value = 0.1. The batch's old values are V - step, its targets V + offset:
#   step  offset  clipped value    unclipped error  clipped error        max
#    0.5    1.0   V - 0.4          1.0 ** 2 = 1     1.4 ** 2 = 1.96      1.96
#    0.5   -1.0   V - 0.4          1                0.6 ** 2 = 0.36      1
#   -0.5   -1.0   V + 0.4          1                1.96                 1.96
#   -0.5    1.0   V + 0.4          1                0.36                 1
#   0.05    0.3   V (inside)       0.09             0.09                 0.09
#  -0.05   -2.0   V (inside)       4                4                    4
VALUE_STEP = [0.5, 0.5, -0.5, -0.5, 0.05, -0.05]
TARGET_OFFSET = [1.0, -1.0, -1.0, 1.0, 0.3, -2.0]
SQUARED_ERROR = {None: [1.0, 1.0, 1.0, 1.0, 0.09, 4.0], 0.1: [1.96, 1.0, 1.96, 1.0, 0.09, 4.0]}


def ppo(action_space: gym.Space, **options: Any) -> PPO:
    torch.manual_seed(0)
    model = PPO(OBSERVATIONS, action_space, hidden_sizes=[4], clip_epsilon=CLIP_EPSILON, **options)
    scramble(model)
    return model


def policy(model: PPO, observation: torch.Tensor) -> D.Distribution:
    """The policy's distribution from its layers (a Box observation's encoding is the observation itself)."""
    features, head = model.actor_body(observation), model.head
    if isinstance(head, CategoricalHead):
        return D.Categorical(logits=head.logits(features))
    assert isinstance(head, GaussianHead)
    return D.Independent(D.Normal(head.mean(features), head.log_std.exp()), 1)


def ppo_batch(
    model: PPO,
    ratio: list[float] = RATIO,
    advantage: list[float] = ADVANTAGE,
    value_step: list[float] = VALUE_STEP,
    target_offset: list[float] = TARGET_OFFSET,
) -> TensorDict:
    """A minibatch whose old log-probs give the probability ratios ``ratio`` under the model's current policy,
    and whose old values and value targets sit at ``V - value_step`` and ``V + target_offset``."""
    n = len(ratio)
    torch.manual_seed(1)
    observation = torch.randn(n, 3)
    if isinstance(model.action_space, gym.spaces.Discrete):
        action = torch.tensor([0, 1, 1, 0, 1, 0][:n])
    else:
        action = torch.randn(n, 2)
    with torch.no_grad():
        log_prob = policy(model, observation).log_prob(action)
        value = model.critic(observation)
    return TensorDict(
        {
            "observation": observation,
            "action": action,
            "action_log_prob": log_prob - torch.tensor(ratio).log(),
            "advantage": torch.tensor(advantage).unsqueeze(-1),
            "state_value": value - torch.tensor(value_step).unsqueeze(-1),
            "value_target": value + torch.tensor(target_offset).unsqueeze(-1),
        },
        batch_size=[n],
    )


@pytest.mark.parametrize("action_space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_ppo_clipped_objective(action_space: gym.Space) -> None:
    model = ppo(action_space, normalize_advantage=False)
    losses = model.loss(ppo_batch(model))
    torch.testing.assert_close(losses["loss_objective"], torch.tensor(-sum(SURROGATE) / 6))


@pytest.mark.parametrize("action_space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_ppo_approx_kl_and_clip_fraction(action_space: gym.Space) -> None:
    model = ppo(action_space)
    losses = model.loss(ppo_batch(model))
    approx_kl = sum((r - 1) - math.log(r) for r in RATIO) / 6
    torch.testing.assert_close(losses["approx_kl"], torch.tensor(approx_kl))
    torch.testing.assert_close(losses["clip_fraction"], torch.tensor(4 / 6))  # 1.5, 0.6, 1.5, 0.6 lie outside


@pytest.mark.parametrize("normalize", [True, False])
def test_ppo_advantage_normalization_per_minibatch(normalize: bool) -> None:
    model = ppo(DISCRETE, normalize_advantage=normalize)
    advantage = [3.0, 1.0, 5.0, 0.5, -2.0, 7.0]  # mean 2.4167, so normalizing shifts and rescales every sample
    losses = model.loss(ppo_batch(model, advantage=advantage))

    if normalize:
        mean = sum(advantage) / 6
        std = math.sqrt(sum((a - mean) ** 2 for a in advantage) / 5)  # Bessel's correction, as torch.std
        advantage = [(a - mean) / (std + 1e-8) for a in advantage]
    clipped = [min(max(r, 1 - CLIP_EPSILON), 1 + CLIP_EPSILON) for r in RATIO]
    surrogate = [min(r * a, c * a) for r, c, a in zip(RATIO, clipped, advantage, strict=True)]
    torch.testing.assert_close(losses["loss_objective"], torch.tensor(-sum(surrogate) / 6))


def test_ppo_does_not_normalize_a_single_advantage() -> None:
    model = ppo(DISCRETE, normalize_advantage=True)
    losses = model.loss(ppo_batch(model, ratio=[1.5], advantage=[2.0], value_step=[0.0], target_offset=[0.0]))
    torch.testing.assert_close(losses["loss_objective"], torch.tensor(-2.4))  # its std is undefined: A stays 2


@pytest.mark.parametrize("clip_value", [None, 0.1])
def test_ppo_value_loss(clip_value: float | None) -> None:
    model = ppo(DISCRETE, clip_value=clip_value, value_coef=0.7)
    losses = model.loss(ppo_batch(model))
    expected = 0.7 * 0.5 * sum(SQUARED_ERROR[clip_value]) / 6
    torch.testing.assert_close(losses["loss_critic"], torch.tensor(expected))


@pytest.mark.parametrize("action_space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_ppo_entropy_term(action_space: gym.Space) -> None:
    model = ppo(action_space, entropy_coef=0.05)
    batch = ppo_batch(model)
    losses = model.loss(batch)
    with torch.no_grad():
        entropy = policy(model, batch["observation"]).entropy().mean()
    torch.testing.assert_close(losses["entropy"], entropy)
    torch.testing.assert_close(losses["loss_entropy"], -0.05 * entropy)


# -- SAC ---------------------------------------------------------------------------------------------------

GAMMA = 0.9
ALPHA = 0.5
NOISE_SEED = 5
# Five transitions: how each ended and how many rewards it sums (the replay buffer's ("next", "discount")).
#   0: 1 step, running on              discount gamma       bootstraps
#   1: 3 steps, running on             discount gamma ** 3  bootstraps
#   2: 2 steps, the episode terminated discount gamma ** 2  no bootstrap: y = r
#   3: 1 step, the episode truncated   discount gamma       bootstraps (the episode had a future)
#   4: 3 steps, truncated              discount gamma ** 3  bootstraps
TERMINATED = [False, False, True, False, False]
TRUNCATED = [False, False, False, True, True]
DISCOUNT = [GAMMA, GAMMA**3, GAMMA**2, GAMMA, GAMMA**3]
WEIGHT = [1.0, 0.25, 0.5, 0.8, 0.1]


def sac(**options: Any) -> SAC:
    torch.manual_seed(2)  # with NOISE_SEED, each critic is the smaller one for some transitions (checked below)
    model = SAC(OBSERVATIONS, SAC_ACTIONS, hidden_sizes=[4], gamma=GAMMA, init_alpha=ALPHA, **options)
    scramble(model)
    return model


def replay_sample(
    observation: torch.Tensor,
    action: torch.Tensor,
    next_observation: torch.Tensor,
    reward: torch.Tensor,
    terminated: list[bool],
    truncated: list[bool],
    discount: list[float],
    weight: list[float] | None = None,
) -> TensorDict:
    """Transitions as the replay buffer samples them (``weight``: prioritized replay's importance weights)."""
    ended = torch.tensor(terminated).unsqueeze(-1), torch.tensor(truncated).unsqueeze(-1)
    batch = TensorDict(
        {
            "observation": observation,
            "action": action,
            "next": {
                "observation": next_observation,
                "reward": reward.float().reshape(-1, 1),
                "terminated": ended[0],
                "truncated": ended[1],
                "done": ended[0] | ended[1],
                "discount": torch.tensor(discount).unsqueeze(-1),
            },
        },
        batch_size=[len(discount)],
    )
    if weight is not None:
        batch["weight"] = torch.tensor(weight).unsqueeze(-1)
    return batch


def sac_batch(weight: list[float] | None = None) -> TensorDict:
    """Five transitions as the replay buffer samples them (with importance weights when given)."""
    torch.manual_seed(1)
    n = len(DISCOUNT)
    low, high = torch.as_tensor(SAC_ACTIONS.low), torch.as_tensor(SAC_ACTIONS.high)
    observation, action = torch.randn(n, 3), low + torch.rand(n, 2) * (high - low)
    next_observation, reward = torch.randn(n, 3), torch.randn(n, 1)
    return replay_sample(observation, action, next_observation, reward, TERMINATED, TRUNCATED, DISCOUNT, weight)


def tanh_gaussian(model: SAC, observation: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The action ``tanh(u)``, ``u = mean + std * noise``, and its log-probability, in float64:
    ``log pi(a|s) = sum(log N(u; mean, std) - log(1 - tanh(u) ** 2))`` (SAC paper, appendix C, eq. 21)."""
    head = model.actor_head
    mean, log_std = head.params(model.actor_body(observation)).double().chunk(2, dim=-1)
    std = log_std.clamp(head.LOG_STD_MIN, head.LOG_STD_MAX).exp()
    u = mean + std * noise.double()
    log_prob = (D.Normal(mean, std).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)).sum(-1)
    return torch.tanh(u), log_prob


def q_values(critics: nn.ModuleList, observation: torch.Tensor, unit_action: torch.Tensor) -> torch.Tensor:
    """``[2, B]``: each critic on ``(s, a)``, ``a`` in [-1, 1] (a Box observation's encoding is itself)."""
    inputs = torch.cat([observation, unit_action.float()], dim=-1)
    return torch.stack([critic(inputs).squeeze(-1) for critic in critics]).double()


def sac_by_hand(model: SAC, batch: TensorDict) -> dict[str, torch.Tensor]:
    """The critic target, the TD errors and the actor's terms of ``batch``, all float64 ``[B]`` or ``[2, B]``."""
    torch.manual_seed(NOISE_SEED)
    next_noise, noise = torch.randn(len(batch), 2), torch.randn(len(batch), 2)  # the loss's draws, in its order
    alpha = model.log_alpha.exp().double()
    low, high = model.action_low, model.action_high
    with torch.no_grad():
        next_action, next_log_prob = tanh_gaussian(model, batch["next", "observation"], next_noise)
        next_q, next_argmin = q_values(model.target_critics, batch["next", "observation"], next_action).min(0)
        reward = batch["next", "reward"].squeeze(-1).double()
        discount = batch["next", "discount"].squeeze(-1).double()
        not_terminated = 1.0 - batch["next", "terminated"].squeeze(-1).double()
        target = reward + discount * not_terminated * (next_q - alpha * next_log_prob)

        unit_action = 2 * (batch["action"] - low) / (high - low) - 1
        q = q_values(model.critics, batch["observation"], unit_action)

        action, log_prob = tanh_gaussian(model, batch["observation"], noise)
        q_pi, argmin = q_values(model.critics, batch["observation"], action).min(0)
    # Each critic is the smaller one for some transitions, so a min over the wrong dim or one critic alone shows.
    assert set(next_argmin[~batch["next", "terminated"].squeeze(-1)].tolist()) == {0, 1}
    assert set(argmin.tolist()) == {0, 1}
    return {
        "target": target,
        "q": q,
        "td_error": q - target,
        "log_prob": log_prob,
        "loss_actor": (alpha * log_prob - q_pi).mean(),
    }


def sac_loss(model: SAC, batch: TensorDict) -> TensorDict:
    torch.manual_seed(NOISE_SEED)
    return model.loss(batch)


def test_sac_loss_draws_the_same_actions_after_reseeding() -> None:
    model, batch = sac(), sac_batch()
    first, second = sac_loss(model, batch.clone()), sac_loss(model, batch.clone())
    for key in first.keys():
        assert torch.equal(first[key], second[key]), key


def test_sac_critic_loss() -> None:
    model, batch = sac(), sac_batch()
    losses = sac_loss(model, batch)
    td_error = sac_by_hand(model, batch)["td_error"]
    expected = (0.5 * (td_error[0] ** 2 + td_error[1] ** 2)).mean()
    torch.testing.assert_close(losses["loss_qvalue"], expected.float())
    assert "td_error" not in batch.keys()  # a uniform buffer has no priorities to update


def test_sac_critic_target_per_transition() -> None:
    """The TD errors the loss writes for a prioritized buffer, ``mean_i |Q_i(s, a) - y|``, show each transition's
    target on its own."""
    model, batch = sac(prioritized=True), sac_batch()
    sac_loss(model, batch)
    by_hand = sac_by_hand(model, batch)
    td_error = batch["td_error"]
    assert td_error.shape == (5,)
    torch.testing.assert_close(td_error, by_hand["td_error"].abs().mean(0).float())
    # Against the reward alone, y = r: only the terminated transition (2) matches; the truncated ones (3, 4)
    # bootstrap like the running ones.
    reward = batch["next", "reward"].squeeze(-1).double()
    no_bootstrap = (by_hand["q"] - reward).abs().mean(0).float()
    torch.testing.assert_close(td_error[2], no_bootstrap[2])
    assert ((td_error - no_bootstrap).abs() > 1e-2)[[0, 1, 3, 4]].all()


def test_sac_importance_weights_scale_each_squared_error() -> None:
    model, batch = sac(prioritized=True), sac_batch(weight=WEIGHT)
    losses = sac_loss(model, batch)
    td_error = sac_by_hand(model, batch)["td_error"]
    weight = torch.tensor(WEIGHT, dtype=torch.float64)
    expected = (weight * 0.5 * (td_error[0] ** 2 + td_error[1] ** 2)).mean()
    torch.testing.assert_close(losses["loss_qvalue"], expected.float())
    torch.testing.assert_close(batch["td_error"], td_error.abs().mean(0).float())  # the weights do not enter


def test_sac_actor_loss_and_diagnostics() -> None:
    model, batch = sac(), sac_batch()
    losses = sac_loss(model, batch)
    by_hand = sac_by_hand(model, batch)
    torch.testing.assert_close(losses["loss_actor"], by_hand["loss_actor"].float())
    torch.testing.assert_close(losses["entropy"], -by_hand["log_prob"].mean().float())
    torch.testing.assert_close(losses["q_mean"], by_hand["q"].mean().float())
    torch.testing.assert_close(losses["alpha"], torch.tensor(ALPHA))


@pytest.mark.parametrize("auto_alpha", [True, False])
def test_sac_temperature_loss(auto_alpha: bool) -> None:
    model, batch = sac(auto_alpha=auto_alpha), sac_batch()
    losses = sac_loss(model, batch)
    if not auto_alpha:
        assert "loss_alpha" not in losses.keys()
        return
    log_prob = sac_by_hand(model, batch)["log_prob"]
    target_entropy = -2.0  # -dim(A)
    expected = -(math.log(ALPHA) * (log_prob + target_entropy)).mean()
    torch.testing.assert_close(losses["loss_alpha"], expected.float())

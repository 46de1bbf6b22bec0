"""GAE and explained variance against numbers computed by hand."""

from __future__ import annotations

import math

import torch

from rl_lightning.functional import explained_variance, generalized_advantage_estimate

F, T = False, True

# Two envs, four steps, laid out [env, time, 1].
# env 0: the episode terminates at t=1 (its next_state_value, 8, must be ignored: no bootstrap, trace cut);
#        t=2..3 are a new episode that runs past the end of the batch (bootstrap from t=3's next value, 4).
# env 1: the episode is truncated at t=2 (bootstrap from the final observation's value, 6, which differs
#        from the reset observation's value at t=3, 0; trace cut); t=3 runs past the end of the batch.
REWARD = torch.tensor([[1.0, 5.0, 3.0, 4.0], [2.0, 0.0, 1.0, 3.0]]).unsqueeze(-1)
STATE_VALUE = torch.tensor([[1.0, 2.0, 1.0, 2.0], [4.0, 2.0, 2.0, 0.0]]).unsqueeze(-1)
NEXT_STATE_VALUE = torch.tensor([[2.0, 8.0, 2.0, 4.0], [2.0, 2.0, 6.0, 2.0]]).unsqueeze(-1)
TERMINATED = torch.tensor([[F, T, F, F], [F, F, F, F]]).unsqueeze(-1)
DONE = torch.tensor([[F, T, F, F], [F, F, T, F]]).unsqueeze(-1)


def gae(gamma: float, lmbda: float) -> tuple[torch.Tensor, torch.Tensor]:
    advantage, value_target = generalized_advantage_estimate(
        REWARD, STATE_VALUE, NEXT_STATE_VALUE, TERMINATED, DONE, gamma=gamma, lmbda=lmbda
    )
    assert advantage.shape == value_target.shape == (2, 4, 1)
    return advantage.squeeze(-1), value_target.squeeze(-1)


def test_gae_by_hand() -> None:
    # gamma = 0.5, lambda = 0.5, so the trace decays by gamma * lambda = 0.25.
    # TD errors delta_t = r_t + gamma * V(s'_t) * (1 - terminated_t) - V(s_t):
    #   env 0: t0: 1 + 0.5*2 - 1 = 1   t1: 5 + 0 - 2 = 3 (terminated)   t2: 3 + 0.5*2 - 1 = 3   t3: 4 + 0.5*4 - 2 = 4
    #   env 1: t0: 2 + 0.5*2 - 4 = -1  t1: 0 + 0.5*2 - 2 = -1  t2: 1 + 0.5*6 - 2 = 2 (truncated)  t3: 3 + 0.5*2 - 0 = 4
    # Advantages, backwards, A_t = delta_t + 0.25 * (1 - done_t) * A_{t+1}:
    #   env 0: A3 = 4, A2 = 3 + 0.25*4 = 4, A1 = 3 (done), A0 = 1 + 0.25*3 = 1.75
    #   env 1: A3 = 4, A2 = 2 (done), A1 = -1 + 0.25*2 = -0.5, A0 = -1 + 0.25*(-0.5) = -1.125
    advantage, value_target = gae(gamma=0.5, lmbda=0.5)
    expected = torch.tensor([[1.75, 3.0, 4.0, 4.0], [-1.125, -0.5, 2.0, 4.0]])
    torch.testing.assert_close(advantage, expected, rtol=0, atol=1e-6)
    # value_target = advantage + V(s): env 0: [2.75, 5, 5, 6], env 1: [2.875, 1.5, 4, 4]
    torch.testing.assert_close(
        value_target, torch.tensor([[2.75, 5.0, 5.0, 6.0], [2.875, 1.5, 4.0, 4.0]]), rtol=0, atol=1e-6
    )


def test_gae_lambda_zero_gives_one_step_td_errors() -> None:
    advantage, _ = gae(gamma=0.5, lmbda=0.0)
    # The deltas of test_gae_by_hand.
    expected = torch.tensor([[1.0, 3.0, 3.0, 4.0], [-1.0, -1.0, 2.0, 4.0]])
    torch.testing.assert_close(advantage, expected, rtol=0, atol=1e-6)


def test_gae_lambda_one_gives_discounted_returns_minus_value() -> None:
    # gamma = 0.5, returns R_t = r_t + 0.5 * R_{t+1}, started from the bootstrap value (none on termination):
    #   env 0: R1 = 5 (terminated), R0 = 1 + 0.5*5 = 3.5; R3 = 4 + 0.5*4 = 6, R2 = 3 + 0.5*6 = 6
    #          advantage R - V = [3.5 - 1, 5 - 2, 6 - 1, 6 - 2] = [2.5, 3, 5, 4]
    #   env 1: R2 = 1 + 0.5*6 = 4 (truncated, bootstrapped), R1 = 0 + 0.5*4 = 2, R0 = 2 + 0.5*2 = 3;
    #          R3 = 3 + 0.5*2 = 4; advantage R - V = [3 - 4, 2 - 2, 4 - 2, 4 - 0] = [-1, 0, 2, 4]
    advantage, value_target = gae(gamma=0.5, lmbda=1.0)
    torch.testing.assert_close(
        advantage, torch.tensor([[2.5, 3.0, 5.0, 4.0], [-1.0, 0.0, 2.0, 4.0]]), rtol=0, atol=1e-6
    )
    # With lambda = 1 the value target is the discounted return itself.
    torch.testing.assert_close(
        value_target, torch.tensor([[3.5, 5.0, 6.0, 6.0], [3.0, 2.0, 4.0, 4.0]]), rtol=0, atol=1e-6
    )


def test_gae_gamma_zero_gives_reward_minus_value() -> None:
    advantage, value_target = gae(gamma=0.0, lmbda=0.95)
    torch.testing.assert_close(advantage, (REWARD - STATE_VALUE).squeeze(-1))
    torch.testing.assert_close(value_target, REWARD.squeeze(-1))


def test_gae_lambda_one_matches_monte_carlo_returns_on_random_data() -> None:
    generator = torch.Generator().manual_seed(0)
    n, steps, gamma = 3, 9, 0.9
    reward = torch.randn(n, steps, 1, generator=generator)
    values = torch.randn(n, steps + 1, 1, generator=generator)
    no_flags = torch.zeros(n, steps, 1, dtype=torch.bool)
    advantage, _ = generalized_advantage_estimate(
        reward, values[:, :-1], values[:, 1:], no_flags, no_flags, gamma=gamma, lmbda=1.0
    )
    returns = values[:, -1]
    expected = torch.empty_like(reward)
    for t in reversed(range(steps)):
        returns = reward[:, t] + gamma * returns
        expected[:, t] = returns - values[:, t]
    torch.testing.assert_close(advantage, expected)


def test_explained_variance() -> None:
    target = torch.tensor([1.0, 2.0, 4.0, 7.0])
    assert explained_variance(target.clone(), target).item() == 1.0
    # Any constant prediction explains nothing: Var[target - c] = Var[target].
    assert abs(explained_variance(torch.full_like(target, target.mean()), target).item()) < 1e-6
    assert abs(explained_variance(torch.full_like(target, -3.0), target).item()) < 1e-6
    # A constant target has no variance to explain.
    assert math.isnan(explained_variance(target, torch.full_like(target, 2.0)).item())

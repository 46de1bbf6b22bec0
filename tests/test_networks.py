"""Observation normalization statistics and action heads against numpy and torch.distributions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal

from rl_lightning.encoders import FlatEncoder
from rl_lightning.networks import BernoulliHead, CategoricalHead, GaussianHead, make_action_head

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (3,))


def observation_batches() -> list[torch.Tensor]:
    """Batches of different sizes and batch dims, with means and scales far from 0 and 1."""
    generator = torch.Generator().manual_seed(0)
    shift, scale = torch.tensor([5.0, -2.0, 0.0]), torch.tensor([3.0, 0.5, 10.0])
    return [
        torch.randn(*dims, 3, generator=generator) * scale + shift + i
        for i, dims in enumerate([(5,), (2, 4), (7,), (1,)])
    ]


@pytest.mark.parametrize("ranks", [1, 2])
def test_running_statistics_match_numpy(ranks: int) -> None:
    # With ranks=2 the reduce function doubles the sums and the count, as summing the statistics of two
    # ranks that saw the same data would: the mean and variance must not change.
    encoder = FlatEncoder(OBS_SPACE, normalize=True)
    reduce = (lambda stats: stats * ranks) if ranks > 1 else None
    seen = []
    for batch in observation_batches():
        encoder.update(batch, reduce)
        seen.append(batch.reshape(-1, 3).double().numpy())
        everything = np.concatenate(seen)
        np.testing.assert_allclose(encoder.mean.numpy(), everything.mean(0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(encoder.var.numpy(), everything.var(0), rtol=1e-10, atol=1e-10)
        assert encoder.count.item() == ranks * len(everything)


def test_normalized_observations() -> None:
    encoder = FlatEncoder(OBS_SPACE, normalize=True, clip=1.5)
    batches = observation_batches()
    for batch in batches:
        encoder.update(batch)
    obs = batches[0]
    expected = ((obs.double() - encoder.mean) / torch.sqrt(encoder.var + 1e-8)).clamp(-1.5, 1.5).float()
    torch.testing.assert_close(encoder(obs), expected)
    assert FlatEncoder(OBS_SPACE, normalize=False)(obs).equal(obs)


@pytest.mark.parametrize("batch", [(6,), (1,)])
def test_categorical_head_matches_torch_distributions(batch: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    head = CategoricalHead(in_features=5, n=4)
    with torch.no_grad():  # logits far from uniform, so mistakes show
        head.logits.weight.mul_(100.0)
    features = torch.randn(*batch, 5)
    action = torch.randint(0, 4, batch)
    reference = Categorical(logits=head.logits(features))

    log_prob, entropy = head.log_prob_entropy(features, action)
    torch.testing.assert_close(log_prob, reference.log_prob(action))
    torch.testing.assert_close(entropy, reference.entropy())

    sampled, sampled_log_prob = head.sample(features)
    assert sampled.shape == batch and sampled.dtype == torch.int64
    assert ((sampled >= 0) & (sampled < 4)).all()
    torch.testing.assert_close(sampled_log_prob, head.log_prob_entropy(features, sampled)[0])
    torch.testing.assert_close(head.mode(features), reference.probs.argmax(-1))


@pytest.mark.parametrize("batch", [(6,), (1,)])
def test_gaussian_head_matches_torch_distributions(batch: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    head = GaussianHead(in_features=5, action_dim=2, log_std_init=-0.5)
    with torch.no_grad():  # a different scale per dimension, so the sum over dimensions is checked
        head.log_std.copy_(torch.tensor([-0.5, 0.7]))
        head.mean.weight.mul_(100.0)
    features = torch.randn(*batch, 5)
    action = torch.randn(*batch, 2) * 2
    reference = Normal(head.mean(features), head.log_std.exp())

    log_prob, entropy = head.log_prob_entropy(features, action)
    torch.testing.assert_close(log_prob, reference.log_prob(action).sum(-1))
    torch.testing.assert_close(entropy, reference.entropy().sum(-1))

    sampled, sampled_log_prob = head.sample(features)
    assert sampled.shape == (*batch, 2)
    torch.testing.assert_close(sampled_log_prob, head.log_prob_entropy(features, sampled)[0])
    torch.testing.assert_close(sampled_log_prob, reference.log_prob(sampled).sum(-1))
    torch.testing.assert_close(head.mode(features), reference.mean)


def test_gaussian_head_initial_log_std() -> None:
    assert torch.equal(GaussianHead(4, 3, log_std_init=-1.0).log_std.data, torch.full((3,), -1.0))


def test_make_action_head() -> None:
    assert isinstance(make_action_head(gym.spaces.Discrete(3), 8), CategoricalHead)
    assert isinstance(make_action_head(gym.spaces.Box(-1.0, 1.0, (2,)), 8), GaussianHead)
    assert isinstance(make_action_head(gym.spaces.MultiBinary(3), 8), BernoulliHead)
    with pytest.raises(ValueError, match=r"MultiBinary\(\(2, 2\)\) has shape \(2, 2\); the policy supports 1-D"):
        make_action_head(gym.spaces.MultiBinary([2, 2]), 8)
    with pytest.raises(ValueError, match=r"Action space Box\(.*\(2, 2\).*\) is not supported"):
        make_action_head(gym.spaces.Box(-1.0, 1.0, (2, 2)), 8)


def test_a_discrete_space_starting_elsewhere_than_0_gets_its_own_action_numbers() -> None:
    """``Discrete(3, start=-1)`` takes -1, 0 and 1: the head samples, picks and scores those, not 0, 1 and 2."""
    torch.manual_seed(0)
    head = make_action_head(gym.spaces.Discrete(3, start=-1), 4)
    features = torch.randn(500, 4)
    action, log_prob = head.sample(features)
    assert set(action.tolist()) == {-1, 0, 1}
    assert set(head.mode(features).tolist()) <= {-1, 0, 1}
    again, _ = head.log_prob_entropy(features, action)
    torch.testing.assert_close(again, log_prob)
    logits = head.logits(features)
    torch.testing.assert_close(log_prob, torch.log_softmax(logits, -1).gather(-1, (action + 1).unsqueeze(-1))[:, 0])


def test_bernoulli_head_matches_torch_distributions() -> None:
    """Log-probabilities and entropies of independent bits equal torch's Bernoulli summed over the bits, and samples
    follow the probabilities."""
    torch.manual_seed(0)
    head = BernoulliHead(4, 3)
    features = torch.randn(20000, 4) * 50  # logits far from 0: probabilities spread over (0, 1)
    logits = head.logits(features)
    reference = torch.distributions.Bernoulli(logits=logits)
    action, log_prob = head.sample(features)
    assert action.dtype == torch.int64 and set(action.unique().tolist()) <= {0, 1}
    torch.testing.assert_close(log_prob, reference.log_prob(action.float()).sum(-1))
    scored, entropy = head.log_prob_entropy(features, action)
    torch.testing.assert_close(scored, log_prob)
    torch.testing.assert_close(entropy, reference.entropy().sum(-1))
    torch.testing.assert_close(action.float().mean(0), reference.probs.mean(0), atol=0.02, rtol=0)
    assert torch.equal(head.mode(features), (reference.probs > 0.5).long())

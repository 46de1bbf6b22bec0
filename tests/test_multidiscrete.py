"""MultiDiscrete actions: the head against ``torch.distributions``, PPO and A2C fits on a real env, refusals.

``TwoDigits-v0`` (made with ``RLDataModule("tests.test_multidiscrete:TwoDigits-v0")``): the observation one-hot
encodes two target digits in ``0..2``; the agent picks two digits (``MultiDiscrete([3, 3])``) and earns 0.5 for each
one that matches its target. Episodes last 4 steps, each with new targets: a return of 4 is perfect, and a uniform
policy expects 4 * 2 * 0.5 / 3 = 1.33.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch import distributions as D

from rl_lightning import A2C, DQN, PPO, SAC, TD3, RLDataModule
from rl_lightning.collector import evaluate
from rl_lightning.networks import MultiCategoricalHead, make_action_head
from tests.conftest import quiet_trainer

NVEC = [3, 3]
ENV_ID = "tests.test_multidiscrete:TwoDigits-v0"
OBSERVATIONS = gym.spaces.Box(0.0, 1.0, (6,), np.float32)
ACTIONS = gym.spaces.MultiDiscrete(NVEC)


class TwoDigitsEnv(gym.Env):
    """Pick the two target digits the observation shows; 0.5 reward per match, 4 steps an episode."""

    observation_space = OBSERVATIONS
    action_space = ACTIONS

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return self._new_target(), {}

    def step(self, action: Any) -> Any:
        assert self.action_space.contains(action), action
        reward = 0.5 * float(np.sum(np.asarray(action) == self.target))
        self.t += 1
        return self._new_target(), reward, self.t >= 4, False, {}

    def _new_target(self) -> np.ndarray:
        self.target = self.np_random.integers(0, 3, size=2)
        obs = np.zeros(6, dtype=np.float32)
        obs[self.target[0]] = obs[3 + self.target[1]] = 1.0
        return obs


gym.register("TwoDigits-v0", entry_point=TwoDigitsEnv)


def test_the_env_follows_the_gymnasium_api() -> None:
    check_env(TwoDigitsEnv(), skip_render_check=True)


# -- the head ----------------------------------------------------------------------------------------------


def scrambled_head() -> MultiCategoricalHead:
    torch.manual_seed(0)
    head = MultiCategoricalHead(5, [3, 2, 4])
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return head


def per_dimension(head: MultiCategoricalHead, features: torch.Tensor) -> list[D.Categorical]:
    """One ``Categorical`` per sub-action, from the layer's weights and the sizes, not from the head's methods."""
    logits = features @ head.logits.weight.T + head.logits.bias
    out, begin = [], 0
    for n in head.nvec:
        out.append(D.Categorical(logits=logits[:, begin : begin + n]))
        begin += n
    return out


def test_log_prob_and_entropy_are_the_sums_over_independent_categoricals() -> None:
    head = scrambled_head()
    features = torch.randn(7, 5)
    action = torch.stack([torch.randint(0, n, (7,)) for n in head.nvec], -1)
    log_prob, entropy = head.log_prob_entropy(features, action)
    dists = per_dimension(head, features)
    expected_log_prob = sum(d.log_prob(action[:, i]) for i, d in enumerate(dists))
    expected_entropy = sum(d.entropy() for d in dists)
    assert log_prob.shape == entropy.shape == (7,)
    torch.testing.assert_close(log_prob, expected_log_prob)
    torch.testing.assert_close(entropy, expected_entropy)
    assert not torch.allclose(entropy, entropy[0].expand(7))  # scrambled weights: entropies differ by state


def test_sample_and_mode_shapes_dtypes_and_log_probs() -> None:
    head = scrambled_head()
    features = torch.randn(6, 5)
    action, log_prob = head.sample(features)
    assert action.shape == (6, 3) and action.dtype == torch.int64 and log_prob.shape == (6,)
    assert all(((action[:, i] >= 0) & (action[:, i] < n)).all() for i, n in enumerate(head.nvec))
    dists = per_dimension(head, features)
    torch.testing.assert_close(log_prob, sum(d.log_prob(action[:, i]) for i, d in enumerate(dists)))
    mode = head.mode(features)
    assert mode.shape == (6, 3) and mode.dtype == torch.int64
    assert torch.equal(mode, torch.stack([d.probs.argmax(-1) for d in dists], -1))


def test_samples_follow_the_probabilities() -> None:
    head = scrambled_head()
    features = torch.randn(1, 5).expand(20_000, 5)
    torch.manual_seed(1)
    action, _ = head.sample(features)
    for i, dist in enumerate(per_dimension(head, features[:1])):
        frequencies = torch.bincount(action[:, i], minlength=head.nvec[i]).float() / 20_000
        # the standard error of a frequency is at most 0.0035 here
        torch.testing.assert_close(frequencies, dist.probs[0], atol=0.015, rtol=0.0)


def test_head_initialization_gives_near_uniform_policies() -> None:
    head = make_action_head(ACTIONS, 8)
    assert isinstance(head, MultiCategoricalHead) and head.logits.out_features == 6
    assert torch.equal(head.logits.bias, torch.zeros(6))
    assert float(head.logits.weight.detach().norm(dim=1).max()) <= 0.01 + 1e-6  # orthogonal rows scaled by 0.01


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            gym.spaces.MultiDiscrete([[2, 3], [4, 5]]),
            r"has a 2-D nvec \(2, 2\); the policy supports 1-D MultiDiscrete actions\. Flatten them",
        ),
        (gym.spaces.MultiDiscrete([3, 3], start=[1, 0]), r"starts at \[1, 0\]; .* Shift them with a gymnasium"),
    ],
    ids=["2d-nvec", "start"],
)
def test_multidiscrete_spaces_the_head_cannot_handle_are_refused(space: gym.Space, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PPO(OBSERVATIONS, space)


# -- fits ----------------------------------------------------------------------------------------------------


def data(total_frames: int, **options: Any) -> RLDataModule:
    return RLDataModule(env_id=ENV_ID, num_envs=4, total_frames=total_frames, eval_episodes=8, eval_envs=4, **options)


@pytest.mark.parametrize("algorithm", [PPO, A2C])
def test_fit_save_load_and_act(tmp_path: Path, algorithm: type[PPO] | type[A2C]) -> None:
    pl.seed_everything(0)
    datamodule = data(256, frames_per_batch=32)
    assert datamodule.action_space == ACTIONS
    options: dict[str, Any] = {"n_epochs": 2, "batch_size": 16} if algorithm is PPO else {}
    model = algorithm(datamodule.observation_space, datamodule.action_space, hidden_sizes=[16], **options)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(tmp_path, val_check_interval=4)
    trainer.fit(model, datamodule=datamodule)
    assert model.frames == 256
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert "val/episode_return" in trainer.callback_metrics

    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = algorithm.load_from_checkpoint(tmp_path / "model.ckpt")
    assert loaded.action_space == ACTIONS
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    observation = torch.from_numpy(np.stack([OBSERVATIONS.sample() for _ in range(5)]))
    action = loaded.act(observation, deterministic=True)["action"]
    assert action.shape == (5, 2) and action.dtype == torch.int64
    assert all(ACTIONS.contains(a) for a in action.numpy())
    assert torch.equal(action, model.act(observation, deterministic=True)["action"])


def test_evaluation_passes_int64_actions_num_envs_by_sub_actions() -> None:
    envs = gym.make_vec("TwoDigits-v0", num_envs=3, vectorization_mode="sync")
    seen: list[np.ndarray] = []
    step = envs.step

    def recording_step(action: np.ndarray) -> Any:
        seen.append(action)
        return step(action)

    envs.step = recording_step  # type: ignore[method-assign]
    target = slice(0, 3), slice(3, 6)

    def oracle(observation: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"action": torch.stack([observation[:, t].argmax(-1) for t in target], -1)}

    result = evaluate(envs, oracle, num_episodes=3, seed=0)
    assert result["episode_return"].tolist() == [4.0, 4.0, 4.0]
    assert all(a.dtype == np.int64 and a.shape == (3, 2) for a in seen)


@pytest.mark.learning
def test_ppo_learns_to_pick_the_target_digits(tmp_path: Path) -> None:
    pl.seed_everything(0)
    datamodule = data(4096, frames_per_batch=256, seed=0)
    model = PPO(datamodule.observation_space, datamodule.action_space, hidden_sizes=[32], n_epochs=4, batch_size=64,
                lr=3e-3, gamma=0.9)  # fmt: skip
    trainer = quiet_trainer(tmp_path, val_check_interval=16)
    trainer.fit(model, datamodule=datamodule)
    # a uniform policy expects 1.33, a perfect one 4
    assert float(trainer.callback_metrics["val/episode_return"]) >= 3.5


# -- algorithms that refuse MultiDiscrete actions -------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "message"),
    [
        (DQN, r"DQN needs a Discrete action space; the env has MultiDiscrete\(\[3 3\]\)\. For Box actions"),
        (SAC, r"SAC needs a bounded 1-D Box action space; the env has MultiDiscrete\(\[3 3\]\)\. For discrete"),
        (TD3, r"TD3 needs a bounded 1-D Box action space; the env has MultiDiscrete\(\[3 3\]\)\. For discrete"),
    ],
)
def test_off_policy_algorithms_refuse_multidiscrete_actions(algorithm: type, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        algorithm(OBSERVATIONS, ACTIONS)

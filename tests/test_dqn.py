"""DQN: its loss against hand computations, the ε schedule, bad input, a smoke fit and a learning test.

The loss tests follow ``tests/test_losses.py``: a tiny model with scrambled parameters, a batch of six chosen
transitions, and the formula of the papers evaluated on network outputs computed here from the layers' weights
(float64), independently of ``dqn.py``. For a transition ``(s, a, r, s')`` summing ``k`` rewards:

- ``y = r + discount * (1 - terminated) * Q'(s', a*)``, ``discount = gamma ** k`` (the replay buffer's
  ``("next", "discount")``), ``Q'`` the target network, ``a* = argmax_a Q'(s', a)`` (DQN, Mnih et al., 2015) or
  ``argmax_a Q(s', a)`` with the online network ``Q`` (double DQN, van Hasselt et al., 2016); truncated transitions
  bootstrap, terminated ones do not.
- ``loss_qvalue = mean_b(w_b * l(Q(s_b, a_b) - y_b))``, ``l(x) = 0.5 x^2`` for ``|x| < 1`` and ``|x| - 0.5`` beyond
  (Huber with delta 1), or ``l(x) = x^2`` (``loss="mse"``); ``w`` the importance weights (1 without).
- ``td_error = |Q(s, a) - y|``, written to the batch when the buffer is prioritized.
- dueling networks: ``Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')`` (Wang et al., 2016).

Each batch's rewards are chosen so that ``Q(s, a) - y`` is a chosen TD error (``DELTA``) under the formula above,
so the expected losses are the hand-computed numbers of the tables below: a loss that computes another target
(another discount, a bootstrap on termination, the other network's argmax) gets other TD errors and fails.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rl_lightning import DQN, RLDataModule
from rl_lightning.networks import DuelingHead
from tests.conftest import quiet_trainer
from tests.test_learning import fit_config
from tests.test_losses import replay_sample, scramble

OBSERVATIONS = gym.spaces.Box(-1.0, 1.0, (3,))
ACTIONS = gym.spaces.Discrete(3)
GAMMA = 0.9

# Six transitions: how each ended and how many rewards it sums.
#   0: 1 step, running on              discount gamma       bootstraps
#   1: 3 steps, running on             discount gamma ** 3  bootstraps
#   2: 2 steps, the episode terminated discount gamma ** 2  no bootstrap: y = r
#   3: 1 step, the episode truncated   discount gamma       bootstraps (the episode had a future)
#   4: 3 steps, truncated              discount gamma ** 3  bootstraps
#   5: 1 step, running on              discount gamma       bootstraps
ACTION = [0, 1, 2, 1, 0, 2]
TERMINATED = [False, False, True, False, False, False]
TRUNCATED = [False, False, False, True, True, False]
DISCOUNT = [GAMMA, GAMMA**3, GAMMA**2, GAMMA, GAMMA**3, GAMMA]
# The TD errors Q(s, a) - y, on both sides of Huber's delta of 1, and their losses:
#   delta   Huber: 0.5 d^2 if |d| < 1 else |d| - 0.5   squared
#    0.5    0.125                                       0.25
#   -2.0    1.5                                         4.0
#    0.3    0.045                                       0.09
#    1.5    1.0                                         2.25
#   -0.8    0.32                                        0.64
#    3.0    2.5                                         9.0
DELTA = [0.5, -2.0, 0.3, 1.5, -0.8, 3.0]
HUBER = [0.125, 1.5, 0.045, 1.0, 0.32, 2.5]
SQUARED = [0.25, 4.0, 0.09, 2.25, 0.64, 9.0]
WEIGHT = [1.0, 0.25, 0.5, 0.8, 0.1, 0.6]


def dqn(**options: Any) -> DQN:
    torch.manual_seed(3)  # with the batch's seed, online and target argmax differ on some transitions (checked)
    model = DQN(OBSERVATIONS, ACTIONS, hidden_sizes=[5], gamma=GAMMA, **options)
    scramble(model)  # online and target networks alike: they differ, as they do between target updates
    return model


def q_by_hand(network: nn.Sequential, observation: torch.Tensor) -> torch.Tensor:
    """``[B, n]`` Q-values in float64 from the layers' weights: ``relu(s W1' + b1) W2' + b2``, or with a dueling
    head ``V + A - mean(A)`` (a Box observation's encoding is the observation itself)."""

    def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return x @ layer.weight.double().T + layer.bias.double()

    hidden_layer, relu, head = network
    assert isinstance(hidden_layer, nn.Linear) and isinstance(relu, nn.ReLU)
    hidden = linear(hidden_layer, observation.double()).clamp_min(0.0)
    if isinstance(head, DuelingHead):
        advantage = linear(head.advantage, hidden)
        return linear(head.value, hidden) + advantage - advantage.mean(-1, keepdim=True)
    assert isinstance(head, nn.Linear)
    return linear(head, hidden)


def next_q_by_hand(model: DQN, next_observation: torch.Tensor, double: bool) -> torch.Tensor:
    """``Q'(s', a*)`` in float64: ``a*`` the target network's argmax, or the online network's with ``double``."""
    target = q_by_hand(model.target_q_network, next_observation)
    chooser = q_by_hand(model.q_network, next_observation) if double else target
    return target.gather(-1, chooser.argmax(-1, keepdim=True)).squeeze(-1)


def dqn_batch(model: DQN, double: bool = False, weight: list[float] | None = None) -> TensorDict:
    """Six transitions as the replay buffer samples them, with rewards such that ``Q(s, a) - y = DELTA`` under the
    target of the module docstring (double DQN's with ``double``)."""
    torch.manual_seed(1)
    n = len(ACTION)
    observation, next_observation = torch.randn(n, 3), torch.randn(n, 3)
    action = torch.tensor(ACTION)
    with torch.no_grad():
        q = q_by_hand(model.q_network, observation).gather(-1, action.unsqueeze(-1)).squeeze(-1)
        next_q = next_q_by_hand(model, next_observation, double)
    not_terminated = 1.0 - torch.tensor(TERMINATED, dtype=torch.float64)
    bootstrap = torch.tensor(DISCOUNT, dtype=torch.float64) * not_terminated * next_q
    reward = q - bootstrap - torch.tensor(DELTA, dtype=torch.float64)
    return replay_sample(observation, action, next_observation, reward, TERMINATED, TRUNCATED, DISCOUNT, weight)


def expected_mean(values: list[float], weight: list[float] | None = None) -> torch.Tensor:
    weight = weight or [1.0] * len(values)
    return torch.tensor(sum(w * v for w, v in zip(weight, values, strict=True)) / len(values))


# -- the loss --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "per_sample"), [("huber", HUBER), ("mse", SQUARED)])
def test_dqn_loss_on_both_sides_of_the_huber_delta(loss: str, per_sample: list[float]) -> None:
    model = dqn(loss=loss)
    batch = dqn_batch(model)
    losses = model.loss(batch)
    torch.testing.assert_close(losses["loss_qvalue"], expected_mean(per_sample))
    q = q_by_hand(model.q_network, batch["observation"]).gather(-1, batch["action"].unsqueeze(-1))
    torch.testing.assert_close(losses["q_mean"], q.mean().float())
    assert [k for k in losses.keys() if k.startswith("loss_")] == ["loss_qvalue"]
    assert not losses["q_mean"].requires_grad
    assert "td_error" not in batch.keys()  # a uniform buffer has no priorities to update


def test_dqn_td_errors_bootstrap_on_truncation_and_use_the_n_step_discount() -> None:
    """The TD errors a prioritized buffer gets are ``|DELTA|``, which only the target with each transition's own
    discount, bootstrapping after truncation and not after termination, gives."""
    model = dqn(prioritized=True)
    batch = dqn_batch(model)
    model.loss(batch)
    assert batch["td_error"].shape == (6,)
    torch.testing.assert_close(batch["td_error"], torch.tensor(DELTA).abs())
    # The terms a wrong target would drop or change are large enough to show in the TD errors:
    with torch.no_grad():
        next_q = next_q_by_hand(model, batch["next", "observation"], double=False)
    assert (next_q.abs() * GAMMA**3 > 0.05).all()  # bootstrapping the truncated 3, 4, or not, differs
    assert ((GAMMA - GAMMA**3) * next_q[[1, 4]]).abs().min() > 0.02  # gamma ** 3, not gamma, for 3-step ones


def test_double_dqn_lets_the_online_network_pick_the_next_action() -> None:
    double, single = dqn(double_dqn=True, prioritized=True), dqn(prioritized=True)  # the same parameters
    batch = dqn_batch(double, double=True)
    double.loss(batch)
    torch.testing.assert_close(batch["td_error"], torch.tensor(DELTA).abs())
    # On the transitions that bootstrap, where the online and the target networks' argmax differ, plain DQN's
    # target differs: the batch tells the two apart.
    with torch.no_grad():
        next_observation = batch["next", "observation"]
        online = q_by_hand(double.q_network, next_observation).argmax(-1)
        target = q_by_hand(double.target_q_network, next_observation).argmax(-1)
    differ = (online != target) & ~torch.tensor(TERMINATED)
    assert differ.any() and not differ.all()
    single_batch = batch.clone()
    single.loss(single_batch)
    assert (single_batch["td_error"] - batch["td_error"]).abs()[differ].min() > 0.05
    torch.testing.assert_close(single_batch["td_error"][~differ], batch["td_error"][~differ])


def test_dueling_head_centres_the_advantages() -> None:
    model = dqn(dueling=True, prioritized=True)
    assert isinstance(model.q_network[-1], DuelingHead)
    batch = dqn_batch(model)  # built with q_by_hand's V + A - mean(A)
    losses = model.loss(batch)
    torch.testing.assert_close(losses["loss_qvalue"], expected_mean(HUBER))
    torch.testing.assert_close(batch["td_error"], torch.tensor(DELTA).abs())
    head: DuelingHead = model.q_network[-1]
    features = torch.randn(4, 5)
    with torch.no_grad():
        q = head(features)
        torch.testing.assert_close(q.mean(-1), head.value(features).squeeze(-1))  # the mean Q-value is V
        head.advantage.bias.add_(7.0)  # the same shift of every advantage leaves Q unchanged
        torch.testing.assert_close(head(features), q)


def test_importance_weights_scale_each_sample_but_not_the_td_errors() -> None:
    model = dqn(prioritized=True)
    batch = dqn_batch(model, weight=WEIGHT)
    losses = model.loss(batch)
    torch.testing.assert_close(losses["loss_qvalue"], expected_mean(HUBER, WEIGHT))
    torch.testing.assert_close(batch["td_error"], torch.tensor(DELTA).abs())


def test_gradient_reaches_the_online_network_through_q_s_a_only() -> None:
    """With double DQN the online network also computes the next action; the gradient is still that of
    ``mean(huber(Q(s, a) - y))`` with ``y`` a constant, and the target network gets none."""
    model = dqn(double_dqn=True)
    batch = dqn_batch(model, double=True)
    model.loss(batch)["loss_qvalue"].backward()
    got = [p.grad for p in model.q_network.parameters()]
    assert all(p.grad is None for p in model.target_q_network.parameters())

    model.zero_grad()
    q = q_by_hand(model.q_network, batch["observation"]).gather(-1, batch["action"].unsqueeze(-1)).squeeze(-1)
    delta = torch.tensor(DELTA, dtype=torch.float64)
    y = q.detach() - delta
    x = q - y
    huber = torch.where(x.abs() < 1.0, 0.5 * x**2, x.abs() - 0.5)
    expected = torch.autograd.grad(huber.mean(), list(model.q_network.parameters()))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_actions_of_a_discrete_space_with_a_start() -> None:
    """``Discrete(3, start=-1)``: actions -1, 0, 1 are Q's outputs 0, 1, 2."""
    shifted = DQN(OBSERVATIONS, gym.spaces.Discrete(3, start=-1), hidden_sizes=[5], gamma=GAMMA, prioritized=True)
    model = dqn(prioritized=True)
    shifted.load_state_dict(model.state_dict())
    batch = dqn_batch(model)
    shifted_batch = batch.clone()
    shifted_batch["action"] = batch["action"] - 1
    model.loss(batch)
    shifted.loss(shifted_batch)
    torch.testing.assert_close(shifted_batch["td_error"], batch["td_error"])
    observation = torch.randn(200, 3)
    greedy = model.policy(observation, deterministic=True)
    torch.testing.assert_close(shifted.policy(observation, deterministic=True), greedy - 1)
    assert set(shifted.policy(observation, deterministic=False).tolist()) == {-1, 0, 1}  # ε = 1: uniform


# -- exploration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "epsilon"),
    [(0, 1.0), (250, 0.775), (500, 0.55), (999, 0.1009), (1000, 0.1), (5000, 0.1)],
)
def test_epsilon_decays_linearly_over_exploration_frames_then_stays(frames: int, epsilon: float) -> None:
    model = DQN(OBSERVATIONS, ACTIONS, exploration_initial_eps=1.0, exploration_final_eps=0.1, exploration_frames=1000)
    model.frames = frames
    assert model.epsilon == pytest.approx(epsilon)


def test_no_exploration_frames_explores_at_the_final_epsilon() -> None:
    model = DQN(OBSERVATIONS, ACTIONS, exploration_final_eps=0.2, exploration_frames=0)
    assert model.epsilon == pytest.approx(0.2)


@pytest.mark.parametrize("epsilon", [0.0, 0.3, 1.0])
def test_each_env_explores_with_probability_epsilon(epsilon: float) -> None:
    model = dqn(exploration_initial_eps=epsilon, exploration_final_eps=epsilon)
    observation = torch.randn(6000, 3)
    torch.manual_seed(0)
    with torch.inference_mode():
        greedy = model.policy(observation, deterministic=True)
        action = model.policy(observation, deterministic=False)
        assert torch.equal(model.act(observation, deterministic=True)["action"], greedy)
    # A uniform action differs from the greedy one with probability 2/3 (three actions).
    changed = (action != greedy).float().mean().item()
    assert changed == pytest.approx(epsilon * 2 / 3, abs=0.025)
    if epsilon == 0.0:
        assert torch.equal(action, greedy)


# -- bad input ------------------------------------------------------------------------------------------------


def test_box_actions_are_refused() -> None:
    message = r"DQN needs a Discrete action space; the env has Box\(-1.0, 1.0, \(2,\), float32\).*SAC, TD3 or DDPG"
    with pytest.raises(ValueError, match=message):
        DQN(OBSERVATIONS, gym.spaces.Box(-1.0, 1.0, (2,)))


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"lr": 0.0}, r"lr=0.0 is invalid: expected a value > 0. Use e.g. 1e-4"),
    ({"exploration_initial_eps": 1.5}, r"exploration_initial_eps=1.5 is invalid: expected a value in \[0.0, 1.0\]"),
    ({"exploration_final_eps": -0.1}, r"exploration_final_eps=-0.1 is invalid: expected a value in \[0.0, 1.0\]"),
    ({"exploration_frames": -1}, r"exploration_frames=-1 is invalid: expected an integer >= 0. Use 0 to explore"),
    ({"exploration_frames": 1e5}, r"exploration_frames=100000.0 is invalid: expected an integer >= 0"),
    ({"loss": "l1"}, r"loss='l1' is invalid: expected 'huber' or 'mse'"),
    ({"hidden_sizes": [0]}, r"hidden_sizes=\[0\] is invalid: expected a list of positive integer sizes"),
    ({"activation": "sigmoid"}, r"activation='sigmoid' is invalid: expected 'elu' or 'gelu'"),
    ({"tau": 0.0}, r"tau=0.0 is invalid: expected a value in \(0.0, 1.0\]"),
    ({"target_update_interval": 0}, r"target_update_interval=0 is invalid: expected an integer >= 1"),
    ({"batch_size": 64, "buffer_size": 32}, r"buffer_size=32 is smaller than batch_size=64"),
    ({"max_grad_norm": -1.0}, r"max_grad_norm=-1.0 is invalid: expected a value > 0. Use null to disable it"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), BAD_VALUES, ids=[", ".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _ in BAD_VALUES]
)
def test_bad_values_are_refused_before_the_buffer_is_made(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        DQN(OBSERVATIONS, ACTIONS, buffer_storage="memmap", buffer_dir=str(tmp_path / "buffer"), **kwargs)
    assert not list(tmp_path.iterdir()), "a constructor that refused its arguments wrote files"


# -- a fit ----------------------------------------------------------------------------------------------------


def test_dqn_smoke_fit_with_every_option(tmp_path: Path) -> None:
    """Prioritized replay, 3-step returns, double DQN and a dueling head in a short fit; then a checkpoint."""
    pl.seed_everything(0)
    data = RLDataModule("CartPole-v1", num_envs=2, frames_per_batch=32, total_frames=384, eval_episodes=2)
    model = DQN(
        data.observation_space, data.action_space, hidden_sizes=[16], batch_size=16, buffer_size=1000,
        init_random_frames=64, utd_ratio=0.5, target_update_interval=4, exploration_frames=256, prioritized=True,
        n_step=3, double_dqn=True, dueling=True,
    )  # fmt: skip
    trainer = quiet_trainer(tmp_path, log_every_n_steps=1)
    trainer.fit(model, datamodule=data)
    # 12 batches of 32 frames; the first 2 (64 frames) random, then 16 updates per batch
    assert model.frames == 384 and model.updates == 10 * 16 == trainer.global_step
    for key in ("train/loss_qvalue", "train/q_mean", "train/epsilon", "train/utd_ratio", "val/episode_return"):
        assert key in trainer.callback_metrics, key
    assert trainer.callback_metrics["train/epsilon"] == pytest.approx(0.05)  # 384 frames: past exploration_frames
    priorities = model.replay_buffer.state_dict()["priority"]
    assert len(set(priorities[: len(model.replay_buffer)].tolist())) > 10  # the TD errors became priorities
    # 160 updates, a copy every 4: the last update was followed by a copy
    for online, target in zip(model.q_network.parameters(), model.target_q_network.parameters(), strict=True):
        assert torch.equal(online, target)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    trainer.save_checkpoint(tmp_path / "dqn.ckpt")
    restored = DQN.load_from_checkpoint(tmp_path / "dqn.ckpt")
    assert restored.hparams["dueling"] and restored.hparams["double_dqn"] and restored.frames == 384
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name


@pytest.mark.learning
def test_dqn_solves_cartpole_within_50000_frames_from_the_default_config(tmp_path: Path) -> None:
    run = fit_config("dqn.yaml", tmp_path)  # the config stops at the first evaluation above 475
    with open(Path(run.trainer.logger.log_dir) / "metrics.csv") as f:
        evaluations = [
            (float(r["step"]), float(r["val/episode_return"])) for r in csv.DictReader(f) if r["val/episode_return"]
        ]
    assert any(frames <= 50_000 and value >= 475.0 for frames, value in evaluations), evaluations
    assert run.model.frames < run.datamodule.total_frames  # solved before the budget ran out

"""A2C: its loss against hand computations, its n-step returns, its one update per batch, bad input, real fits.

A2C (Mnih et al., 2016; stable-baselines3's synchronous variant), with advantage ``A`` and value target ``R``:

- ``loss_objective = -mean(A * log pi(a|s))``; with ``normalize_advantage``, ``A`` is first normalized over the
  batch: ``(A - mean(A)) / (std(A) + 1e-8)``, ``std`` with Bessel's correction.
- ``loss_critic = value_coef * 0.5 * mean((V(s) - R) ** 2)``.
- ``loss_entropy = -entropy_coef * mean(H(pi(.|s)))``, and ``entropy = mean(H)`` as a detached diagnostic.
- With ``gae_lambda=1``, ``R_t = r_t + gamma * r_{t+1} + ... + gamma ** k * V(s'_{t+k})``: the rewards up to the
  episode's end or the batch's end, then the value of the last next observation, except where the episode
  terminated (no bootstrap); ``A_t = R_t - V(s_t)``.

The hand computations take the networks' outputs from their layers and ``torch.distributions``, not from a2c.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import pytest
import torch
from tensordict import TensorDict
from torch import distributions as D
from torch import nn

from rl_lightning import A2C, RLCallback, RLDataModule
from rl_lightning.algorithms.on_policy import TRAIN_KEYS
from rl_lightning.networks import CategoricalHead, GaussianHead
from tests.conftest import quiet_trainer
from tests.test_learning import fit_config

OBSERVATIONS = gym.spaces.Box(-1.0, 1.0, (3,))
DISCRETE = gym.spaces.Discrete(2)
BOX = gym.spaces.Box(-1.0, 1.0, (2,))
SPACES = pytest.mark.parametrize("action_space", [DISCRETE, BOX], ids=["discrete", "box"])

# Five transitions: their advantages (mean 1.5: normalizing shifts and rescales every one) and how far each value
# target lies from the critic's value, so that (V - R) ** 2 is known: 1, 0.25, 4, 0.09, 2.25 (mean 1.518).
ADVANTAGE = [3.0, 1.0, 5.0, 0.5, -2.0]
TARGET_OFFSET = [1.0, -0.5, 2.0, 0.3, -1.5]


def scramble(model: nn.Module) -> None:
    """Random parameters instead of the initial ones (zero biases and near-uniform policies hide wrong formulas)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)


def a2c(action_space: gym.Space = DISCRETE, **options: Any) -> A2C:
    torch.manual_seed(0)
    model = A2C(OBSERVATIONS, action_space, hidden_sizes=[4], **options)
    scramble(model)
    return model


def policy(model: A2C, observation: torch.Tensor) -> D.Distribution:
    """The policy's distribution from its layers (a Box observation's encoding is the observation itself)."""
    features, head = model.actor_body(observation), model.head
    if isinstance(head, CategoricalHead):
        return D.Categorical(logits=head.logits(features))
    assert isinstance(head, GaussianHead)
    return D.Independent(D.Normal(head.mean(features), head.log_std.exp()), 1)


def a2c_batch(model: A2C, advantage: list[float] = ADVANTAGE) -> TensorDict:
    """A flat batch of transitions with the advantages ``advantage`` and value targets ``V(s) + TARGET_OFFSET``."""
    n = len(advantage)
    torch.manual_seed(1)
    observation = torch.randn(n, 3)
    if isinstance(model.action_space, gym.spaces.Discrete):
        action = torch.tensor([0, 1, 1, 0, 1][:n])
    else:
        action = torch.randn(n, 2)
    with torch.no_grad():
        value = model.critic(observation)
    return TensorDict(
        {
            "observation": observation,
            "action": action,
            "action_log_prob": torch.zeros(n),  # the collecting policy's: A2C has no ratio, so it must not matter
            "state_value": value,
            "advantage": torch.tensor(advantage).unsqueeze(-1),
            "value_target": value + torch.tensor(TARGET_OFFSET[:n]).unsqueeze(-1),
        },
        batch_size=[n],
    )


# -- the loss --------------------------------------------------------------------------------------------


@SPACES
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_policy_gradient_objective(action_space: gym.Space, normalize: bool) -> None:
    model = a2c(action_space, normalize_advantage=normalize)
    batch = a2c_batch(model)
    losses = model.loss(batch)

    advantage = ADVANTAGE
    if normalize:
        mean = sum(advantage) / 5
        std = math.sqrt(sum((a - mean) ** 2 for a in advantage) / 4)  # Bessel's correction, as torch.std
        advantage = [(a - mean) / (std + 1e-8) for a in advantage]
    with torch.no_grad():
        log_prob = policy(model, batch["observation"]).log_prob(batch["action"])
    expected = -sum(a * float(lp) for a, lp in zip(advantage, log_prob, strict=True)) / 5
    torch.testing.assert_close(losses["loss_objective"], torch.tensor(expected))


def test_a_single_advantage_is_not_normalized() -> None:
    model = a2c(normalize_advantage=True)
    batch = a2c_batch(model, advantage=[2.0])
    losses = model.loss(batch)
    with torch.no_grad():
        log_prob = policy(model, batch["observation"]).log_prob(batch["action"])
    torch.testing.assert_close(losses["loss_objective"], -2.0 * log_prob[0])  # its std is undefined: A stays 2


@pytest.mark.parametrize("value_coef", [0.5, 0.7])
def test_value_loss(value_coef: float) -> None:
    model = a2c(value_coef=value_coef)
    losses = model.loss(a2c_batch(model))
    expected = value_coef * 0.5 * sum(o**2 for o in TARGET_OFFSET) / 5  # 0.5 * mean(1, 0.25, 4, 0.09, 2.25)
    torch.testing.assert_close(losses["loss_critic"], torch.tensor(expected))


@SPACES
@pytest.mark.parametrize("entropy_coef", [0.0, 0.05])
def test_entropy_term(action_space: gym.Space, entropy_coef: float) -> None:
    model = a2c(action_space, entropy_coef=entropy_coef)
    batch = a2c_batch(model)
    losses = model.loss(batch)
    with torch.no_grad():
        entropy = policy(model, batch["observation"]).entropy().mean()
    torch.testing.assert_close(losses["entropy"], entropy)
    torch.testing.assert_close(losses["loss_entropy"], -entropy_coef * entropy)
    assert not losses["entropy"].requires_grad
    # nothing but the three terms enters the objective
    assert sorted(k for k in losses.keys() if isinstance(k, str) and k.startswith("loss_")) == [
        "loss_critic",
        "loss_entropy",
        "loss_objective",
    ]


def test_the_policy_loss_trains_only_the_actor_and_the_value_loss_only_the_critic() -> None:
    model = a2c()
    losses = model.loss(a2c_batch(model))
    actor = [*model.actor_body.parameters(), *model.head.parameters()]
    critic = list(model.critic.parameters())
    for term, trained, untouched in (("loss_objective", actor, critic), ("loss_critic", critic, actor)):
        grads = torch.autograd.grad(losses[term], trained + untouched, allow_unused=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(trained)]), term
        assert all(g is None for g in grads[len(trained) :]), term


# -- the returns -----------------------------------------------------------------------------------------

GAMMA = 0.9
F, T = False, True
# Two envs, four steps each, laid out [env, time]:
# env 0: the episode terminates at t=1 (no bootstrap); t=2..3 run on past the batch's end (bootstrap from V(s'_3)).
# env 1: the episode is truncated at t=1 (bootstrap from its final observation's value V(s'_1), not from the reset
#        observation at t=2); t=2..3 run on past the batch's end.
REWARDS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 1.5]]
TERMINATED = [[F, T, F, F], [F, F, F, F]]
TRUNCATED = [[F, F, F, F], [F, T, F, F]]


def rollout() -> TensorDict:
    """The batch as the collector writes it: each observation is the one before's next observation, except after
    an episode's end, where the env was reset."""
    torch.manual_seed(3)
    terminated, truncated = torch.tensor(TERMINATED).unsqueeze(-1), torch.tensor(TRUNCATED).unsqueeze(-1)
    done = terminated | truncated
    next_observation = torch.randn(2, 4, 3)
    observation = torch.randn(2, 4, 3)  # the reset ones stay
    observation[:, 1:] = torch.where(done[:, :-1], observation[:, 1:], next_observation[:, :-1])
    return TensorDict(
        {
            "observation": observation,
            "action": torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]]),
            "action_log_prob": torch.full((2, 4), -0.7),
            "next": {
                "observation": next_observation,
                "reward": torch.tensor(REWARDS).unsqueeze(-1),
                "terminated": terminated,
                "truncated": truncated,
                "done": done,
            },
        },
        batch_size=[2, 4],
    )


def test_n_step_returns_bootstrap_on_truncation_and_at_the_batch_end() -> None:
    model = a2c(gamma=GAMMA)  # gae_lambda=1.0 by default: the n-step returns
    batch = model.prepare_batch(rollout())
    with torch.no_grad():
        v = model.critic(batch["observation"]).squeeze(-1).tolist()
        v_next = model.critic(batch["next", "observation"]).squeeze(-1).tolist()
    (r0, r1), g = REWARDS, GAMMA
    returns = [
        [
            r0[0] + g * r0[1],  # terminated at t=1: no bootstrap
            r0[1],
            r0[2] + g * r0[3] + g**2 * v_next[0][3],  # the batch's end bootstraps
            r0[3] + g * v_next[0][3],
        ],
        [
            r1[0] + g * r1[1] + g**2 * v_next[1][1],  # truncated at t=1: the final observation's value
            r1[1] + g * v_next[1][1],
            r1[2] + g * r1[3] + g**2 * v_next[1][3],
            r1[3] + g * v_next[1][3],
        ],
    ]
    torch.testing.assert_close(batch["value_target"].squeeze(-1), torch.tensor(returns))
    torch.testing.assert_close(batch["state_value"].squeeze(-1), torch.tensor(v))
    advantage = [[ret - val for ret, val in zip(rr, vv, strict=True)] for rr, vv in zip(returns, v, strict=True)]
    torch.testing.assert_close(batch["advantage"].squeeze(-1), torch.tensor(advantage))
    # the reset observation's value at env 1, t=2 is another number: bootstrapping from it would show
    assert abs(v[1][2] - v_next[1][1]) > 0.1


def test_the_whole_batch_is_one_update() -> None:
    model = a2c(gamma=GAMMA)
    batch = model.prepare_batch(rollout())
    (update,) = list(model.optim_batches(batch, epoch=0))
    assert model.optim_epochs == 1
    assert update.batch_size == torch.Size([8]) and set(update.keys()) == set(TRAIN_KEYS)
    torch.testing.assert_close(update["value_target"], batch["value_target"].reshape(8, 1))
    model.loss(update)["loss_objective"].backward()  # the collector's inference tensors were copied


# -- real fits -------------------------------------------------------------------------------------------


class OptimBatchSizes(RLCallback):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_process_optim_batch(self, trainer: pl.Trainer, module: Any, batch: TensorDict) -> None:
        self.sizes.append(batch.numel())


def tiny_run(
    tmp_path: Path, env_id: str, callbacks: list[pl.Callback] | None = None, **options: Any
) -> tuple[pl.Trainer, A2C, RLDataModule]:
    """4 envs x 8 steps per batch, 8 batches, tiny networks."""
    pl.seed_everything(0)
    data = RLDataModule(env_id=env_id, num_envs=4, frames_per_batch=32, total_frames=256, eval_episodes=2)
    model = A2C(data.observation_space, data.action_space, hidden_sizes=[16], **options)
    trainer = quiet_trainer(tmp_path, val_check_interval=4, log_every_n_steps=1, callbacks=callbacks or [])
    return trainer, model, data


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_one_optimizer_step_per_collector_batch_with_the_chosen_optimizer(tmp_path: Path, optimizer: str) -> None:
    sizes = OptimBatchSizes()
    trainer, model, data = tiny_run(tmp_path, "CartPole-v1", [sizes], optimizer=optimizer, lr=1e-3)
    trainer.fit(model, datamodule=data)
    assert model.frames == 256 and model.updates == 8 and trainer.global_step == 8
    assert sizes.sizes == [32] * 8  # each update on all 4 x 8 transitions of its batch
    torch_optimizer = trainer.optimizers[0]
    state = torch_optimizer.state[next(model.parameters())]
    if optimizer == "rmsprop":
        assert type(torch_optimizer) is torch.optim.RMSprop and set(state) >= {"square_avg"}
        assert torch_optimizer.defaults["alpha"] == 0.99
    else:
        assert type(torch_optimizer) is torch.optim.Adam and set(state) >= {"exp_avg", "exp_avg_sq"}
    assert torch_optimizer.defaults["eps"] == 1e-5 and torch_optimizer.defaults["lr"] == 1e-3
    assert int(state["step"]) == 8


def test_box_actions_train_save_and_load(tmp_path: Path) -> None:
    trainer, model, data = tiny_run(
        tmp_path, "Pendulum-v1", entropy_coef=0.01, normalize_advantage=True, gae_lambda=0.9
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=data)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    metrics = trainer.callback_metrics
    for key in ("train/loss_objective", "train/loss_critic", "train/loss_entropy", "train/entropy",
                "train/explained_variance", "val/episode_return"):  # fmt: skip
        assert key in metrics, key
    assert float(metrics["train/loss_entropy"]) == pytest.approx(-0.01 * float(metrics["train/entropy"]))

    trainer.save_checkpoint(tmp_path / "a2c.ckpt")
    loaded = A2C.load_from_checkpoint(tmp_path / "a2c.ckpt")
    assert loaded.hparams["gae_lambda"] == 0.9 and loaded.normalize_advantage and loaded.entropy_coef == 0.01
    assert loaded.frames == 256 and loaded.updates == 8
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# -- bad input -------------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": 0.0}, r"lr=0.0 is invalid: expected a value > 0"),
        ({"optimizer": "sgd"}, r"optimizer='sgd' is invalid: expected 'adam' or 'rmsprop'"),
        ({"optimizer_eps": -1e-5}, r"optimizer_eps=-1e-05 is invalid: expected a value > 0"),
        ({"gamma": 1.5}, r"gamma=1.5 is invalid: expected a value in \[0.0, 1.0\]"),
        ({"gae_lambda": NAN}, r"gae_lambda=nan is invalid: expected a value in \[0.0, 1.0\]"),
        ({"value_coef": -0.5}, r"value_coef=-0.5 is invalid: expected a value >= 0"),
        ({"entropy_coef": INF}, r"entropy_coef=inf is invalid: expected a finite value >= 0"),
        ({"max_grad_norm": 0.0}, r"max_grad_norm=0.0 is invalid: expected a value > 0\. Use null to disable it"),
        ({"hidden_sizes": [-1]}, r"hidden_sizes=\[-1\] is invalid: expected a list of positive"),
        ({"activation": "sigmoid"}, r"activation='sigmoid' is invalid"),
        ({"log_std_init": INF}, r"log_std_init=inf is invalid: expected a finite number"),
        ({"nonfinite": "ignore"}, r"nonfinite='ignore' is invalid: expected 'raise' or 'skip'"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else "",
)
def test_bad_values_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        A2C(OBSERVATIONS, DISCRETE, **options)


def test_action_spaces_it_cannot_handle_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Box\(.*\(2, 2\).*\) is not supported: expected Discrete, a 1-D Box"):
        A2C(OBSERVATIONS, gym.spaces.Box(-1.0, 1.0, (2, 2)))


def test_missing_spaces_say_how_to_pass_them() -> None:
    with pytest.raises(ValueError, match=r"A2C needs observation_space and action_space.*A2C\(data.observation_space"):
        A2C()


# -- learning --------------------------------------------------------------------------------------------


@pytest.mark.learning
def test_a2c_solves_cartpole_within_300000_frames_from_the_default_config(tmp_path: Path) -> None:
    run = fit_config("a2c.yaml", tmp_path)
    assert run.trainer.callback_metrics["val/episode_return"] >= 475.0
    assert run.model.frames <= 300_000

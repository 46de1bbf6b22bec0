"""TD3 and DDPG: loss terms against hand computations, delayed actor and target updates, exploration, bad input,
smoke fits with a checkpoint reload, and learning on Pendulum (``-m learning``).

TD3 (Fujimoto et al., 2018), with twin critics ``Q_1, Q_2``, their targets ``Q'_1, Q'_2``, the actor ``pi`` (tanh
output in the unit scale [-1, 1]) and its target ``pi'``:

- ``a' = clip(pi'(s') + clip(eps, -c, c), -1, 1)``, ``eps ~ N(0, sigma²)`` (target policy smoothing);
- ``y = r + discount * (1 - terminated) * min_i Q'_i(s', a')``, ``discount = gamma ** k`` for a ``k``-step
  transition; truncated transitions bootstrap, terminated ones do not;
- ``loss_qvalue = mean_b(w_b * sum_i (Q_i(s, a) - y) ** 2)``, ``w`` the importance weights (1 without), and
  ``td_error = mean_i |Q_i(s, a) - y|`` written to the batch when prioritized;
- ``loss_actor = -mean(Q_1(s, pi(s)))``, training the actor only on every ``policy_delay``-th applied update.

DDPG (Lillicrap et al., 2016): one critic, ``y = r + discount * (1 - terminated) * Q'(s', pi'(s'))``,
``loss_qvalue = mean_b(w_b * (Q(s, a) - y) ** 2)``, the actor trained on every update.

The hand computations call the networks' layers directly in float64, and draw the loss's smoothing noise after
re-seeding torch's generator as the loss does.
"""

from __future__ import annotations

import csv
import inspect
from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torch.nn import functional as F

from rl_lightning import DDPG, TD3, RLDataModule
from rl_lightning.functional import total_loss
from tests.conftest import quiet_trainer
from tests.test_learning import fit_config, stop_at
from tests.test_losses import replay_sample, scramble

OBSERVATIONS = gym.spaces.Box(-1.0, 1.0, (3,))
# Asymmetric bounds: the critics see actions rescaled to [-1, 1], which a wrong rescaling would get wrong.
ACTIONS = gym.spaces.Box(np.array([-1.0, 0.0], dtype=np.float32), np.array([3.0, 1.0], dtype=np.float32))

GAMMA = 0.9
NOISE_SEED = 5
SIGMA, NOISE_CLIP = 0.5, 0.6  # large enough that both the noise clip and the action clip act on some entries
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


def td3(**options: Any) -> TD3:
    torch.manual_seed(3)  # with NOISE_SEED, each critic is the smaller target for some transitions (checked below)
    model = TD3(
        OBSERVATIONS,
        ACTIONS,
        hidden_sizes=[4],
        gamma=GAMMA,
        target_policy_noise=SIGMA,
        target_noise_clip=NOISE_CLIP,
        **options,
    )
    scramble(model)
    return model


def ddpg(**options: Any) -> DDPG:
    torch.manual_seed(3)
    model = DDPG(OBSERVATIONS, ACTIONS, hidden_sizes=[4], gamma=GAMMA, **options)
    scramble(model)
    return model


def batch_of_five(weight: list[float] | None = None) -> TensorDict:
    """Five transitions as the replay buffer samples them (with importance weights when given)."""
    torch.manual_seed(1)
    n = len(DISCOUNT)
    low, high = torch.as_tensor(ACTIONS.low), torch.as_tensor(ACTIONS.high)
    observation, action = torch.randn(n, 3), low + torch.rand(n, 2) * (high - low)
    next_observation, reward = torch.randn(n, 3), torch.randn(n, 1)
    return replay_sample(observation, action, next_observation, reward, TERMINATED, TRUNCATED, DISCOUNT, weight)


def linear(network: nn.Module, index: int, x: torch.Tensor) -> torch.Tensor:
    """The ``index``-th layer of ``network``, a linear one, in float64."""
    assert isinstance(network, nn.Sequential)
    layer = network[index]
    assert isinstance(layer, nn.Linear)
    return F.linear(x, layer.weight.double(), layer.bias.double())


def actor_by_hand(actor: nn.Module, observation: torch.Tensor) -> torch.Tensor:
    """``tanh(W2 relu(W1 s + b1) + b2)`` in float64, from the layers of a one-hidden-layer actor."""
    return torch.tanh(linear(actor, 2, torch.relu(linear(actor, 0, observation.double()))))


def q_by_hand(critics: nn.ModuleList, observation: torch.Tensor, unit_action: torch.Tensor) -> torch.Tensor:
    """``[n_critics, B]``: each critic ``W2 relu(W1 [s, a] + b1) + b2`` in float64, ``a`` in [-1, 1]."""
    inputs = torch.cat([observation.double(), unit_action.double()], dim=-1)
    return torch.stack([linear(c, 2, torch.relu(linear(c, 0, inputs))).squeeze(-1) for c in critics])


def by_hand(model: TD3, batch: TensorDict, smoothing: bool = True) -> dict[str, torch.Tensor]:
    """The critic target, the online values and the actor loss of ``batch``, all float64."""
    low, high = model.action_low.double(), model.action_high.double()
    next_observation = batch["next", "observation"]
    with torch.no_grad():
        next_action = actor_by_hand(model.target_actor, next_observation)
        if smoothing:
            torch.manual_seed(NOISE_SEED)
            noise = torch.randn(len(batch), 2).double() * SIGMA
            clipped = noise.clamp(-NOISE_CLIP, NOISE_CLIP)
            unclamped = next_action + clipped
            next_action = unclamped.clamp(-1.0, 1.0)
            # Both clips act on some entries, so leaving either out (or swapping them) changes the target.
            assert (noise != clipped).any() and (unclamped != next_action).any()
        next_q = q_by_hand(model.target_critics, next_observation, next_action)
        reward = batch["next", "reward"].squeeze(-1).double()
        discount = batch["next", "discount"].squeeze(-1).double()
        not_terminated = 1.0 - batch["next", "terminated"].squeeze(-1).double()
        target = reward + discount * not_terminated * next_q.min(0).values

        unit_action = 2 * (batch["action"].double() - low) / (high - low) - 1
        q = q_by_hand(model.critics, batch["observation"], unit_action)
        action = actor_by_hand(model.actor, batch["observation"])
        loss_actor = -q_by_hand(model.critics[:1], batch["observation"], action).mean()
    if len(model.critics) == 2:
        # Each critic is the smaller target for some bootstrapping transition: a min over the wrong dim or one
        # critic alone shows.
        assert set(next_q.argmin(0)[~batch["next", "terminated"].squeeze(-1)].tolist()) == {0, 1}
    return {"target": target, "q": q, "td_error": q - target, "loss_actor": loss_actor}


def seeded_loss(model: TD3, batch: TensorDict) -> TensorDict:
    torch.manual_seed(NOISE_SEED)
    return model.loss(batch)


# -- the losses against hand computations ---------------------------------------------------------------------


def test_td3_critic_loss_with_smoothed_clipped_double_q_target() -> None:
    model, batch = td3(), batch_of_five()
    losses = seeded_loss(model, batch)
    td_error = by_hand(model, batch)["td_error"]
    torch.testing.assert_close(losses["loss_qvalue"], (td_error**2).sum(0).mean().float())
    assert "td_error" not in batch.keys()  # a uniform buffer has no priorities to update
    # without the smoothing noise the target is another one
    unsmoothed = by_hand(model, batch, smoothing=False)["td_error"]
    assert not torch.allclose(losses["loss_qvalue"], (unsmoothed**2).sum(0).mean().float(), rtol=1e-3)


def per_transition_squared_error(model: TD3, batch: TensorDict) -> torch.Tensor:
    """``sum_i (Q_i(s_b, a_b) - y_b) ** 2`` of each transition ``b``, from the loss: importance weights that pick
    one transition at a time (the mean over 5 transitions, times 5)."""
    errors = []
    for b in range(len(batch)):
        picked = batch.clone()
        picked["weight"] = F.one_hot(torch.tensor([b]), len(batch)).float().T
        errors.append(seeded_loss(model, picked)["loss_qvalue"] * len(batch))
    return torch.stack(errors)


def test_td3_critic_target_per_transition_terminated_truncated_and_n_step() -> None:
    """Each transition's target on its own: the stored n-step discounts, the bootstrap on truncation but not on
    termination."""
    model, batch = td3(prioritized=True), batch_of_five()
    squared = per_transition_squared_error(model, batch)
    expected = by_hand(model, batch)
    torch.testing.assert_close(squared, (expected["td_error"] ** 2).sum(0).float())
    no_bootstrap = ((expected["q"] - batch["next", "reward"].squeeze(-1).double()) ** 2).sum(0).float()
    torch.testing.assert_close(squared[2], no_bootstrap[2])  # terminated: y = r
    assert ((squared - no_bootstrap).abs() > 1e-2)[[0, 1, 3, 4]].all()  # the others, truncated too, bootstrap
    # One-step discounts instead of the stored n-step ones give other targets for the 3-step transitions.
    one_step = batch.clone()
    one_step["next", "discount"] = torch.full((5, 1), GAMMA)
    wrong = (by_hand(model, one_step)["td_error"] ** 2).sum(0).float()
    assert ((squared - wrong).abs() > 1e-3)[[1, 4]].all()
    # The TD errors a prioritized buffer gets: mean_i |Q_i(s, a) - y|.
    seeded_loss(model, batch)
    assert batch["td_error"].shape == (5,)
    torch.testing.assert_close(batch["td_error"], expected["td_error"].abs().mean(0).float())


def test_td3_importance_weights_scale_each_squared_error() -> None:
    model, batch = td3(prioritized=True), batch_of_five(weight=WEIGHT)
    losses = seeded_loss(model, batch)
    td_error = by_hand(model, batch)["td_error"]
    weight = torch.tensor(WEIGHT, dtype=torch.float64)
    torch.testing.assert_close(losses["loss_qvalue"], (weight * (td_error**2).sum(0)).mean().float())
    torch.testing.assert_close(batch["td_error"], td_error.abs().mean(0).float())  # the weights do not enter


@pytest.mark.parametrize(
    ("updates", "skipped", "trains_actor"),
    [(0, 0, False), (1, 0, True), (2, 0, False), (3, 0, True), (2, 1, True), (3, 1, False)],
)
def test_td3_actor_loss_trains_the_actor_on_every_policy_delay_th_applied_update(
    updates: int, skipped: int, trains_actor: bool
) -> None:
    """``policy_delay=2``: the update about to run is applied update ``updates - skipped + 1``; the even ones train
    the actor. ``loss_actor`` is reported on every update (its logged mean is the actor objective's)."""
    model, batch = td3(), batch_of_five()
    model.updates, model.skipped_updates = updates, skipped
    losses = seeded_loss(model, batch)
    torch.testing.assert_close(losses["loss_actor"], by_hand(model, batch)["loss_actor"].float())
    assert losses["loss_actor"].requires_grad is trains_actor
    total_loss(losses).backward()
    assert all((p.grad is not None) is trains_actor for p in model.actor.parameters())
    assert all(p.grad is not None for p in model.critics.parameters())


def test_td3_actor_loss_leaves_the_critics_gradients_empty() -> None:
    model = td3()
    model.updates = 1  # a policy update
    losses = seeded_loss(model, batch_of_five())
    losses["loss_actor"].backward()
    assert all(p.grad is None for p in model.critics.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.actor.parameters())


def test_td3_adam_leaves_the_actor_alone_between_its_updates() -> None:
    """One fused Adam for both groups: after an actor update (Adam's moments non-zero) an update without the actor
    term changes the critics but not the actor, whose step count stays."""
    model, batch = td3(), batch_of_five()
    optimizer = model.configure_optimizers()
    actor_before = [p.detach().clone() for p in model.actor.parameters()]
    critics_before = [p.detach().clone() for p in model.critics.parameters()]
    for updates, moves_actor in ((1, True), (2, False), (4, False)):
        model.updates = updates
        optimizer.zero_grad(set_to_none=True)
        total_loss(seeded_loss(model, batch)).backward()
        optimizer.step()
        actor = [p.detach().clone() for p in model.actor.parameters()]
        critics = [p.detach().clone() for p in model.critics.parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(actor_before, actor, strict=True)) is moves_actor
        assert all(not torch.equal(a, b) for a, b in zip(critics_before, critics, strict=True))
        actor_before, critics_before = actor, critics
    assert all(float(optimizer.state[p]["step"]) == 1 for p in model.actor.parameters())
    assert all(float(optimizer.state[p]["step"]) == 3 for p in model.critics.parameters())


@pytest.mark.parametrize("prioritized", [False, True])
def test_ddpg_single_critic_target_without_smoothing(prioritized: bool) -> None:
    weight = WEIGHT if prioritized else None
    model, batch = ddpg(prioritized=prioritized), batch_of_five(weight=weight)
    assert len(model.critics) == len(model.target_critics) == 1
    losses = seeded_loss(model, batch)
    expected = by_hand(model, batch, smoothing=False)
    w = torch.tensor(WEIGHT if prioritized else [1.0] * 5, dtype=torch.float64)
    torch.testing.assert_close(losses["loss_qvalue"], (w * expected["td_error"][0] ** 2).mean().float())
    torch.testing.assert_close(losses["loss_actor"], expected["loss_actor"].float())
    if prioritized:
        torch.testing.assert_close(batch["td_error"], expected["td_error"][0].abs().float())
    # no random draw: the same loss without re-seeding
    torch.testing.assert_close(model.loss(batch.clone())["loss_qvalue"], losses["loss_qvalue"])


@pytest.mark.parametrize("updates", [0, 1, 2, 5])
def test_ddpg_trains_the_actor_on_every_update(updates: int) -> None:
    model = ddpg()
    model.updates = updates
    losses = model.loss(batch_of_five())
    losses["loss_actor"].backward()
    assert all(p.grad is not None for p in model.actor.parameters())
    assert all(p.grad is None for p in model.critics.parameters())


# -- delayed target updates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TD3, DDPG])
def test_targets_move_every_policy_delay_applied_updates(cls: type[TD3]) -> None:
    """The model's own target updater (``target_update_interval=policy_delay``) moves the target actor and critics
    by ``tau`` after every ``policy_delay``-th applied update; a skipped update does not count."""
    options: dict[str, Any] = {"policy_delay": 3} if cls is TD3 else {}
    model = cls(OBSERVATIONS, ACTIONS, hidden_sizes=[8], tau=0.5, **options)
    hook = model.target_updater
    assert (hook.tau, hook.interval) == (0.5, model.policy_delay)
    with torch.no_grad():
        for p in [*model.actor.parameters(), *model.critics.parameters()]:
            p.add_(1.0)

    def targets() -> list[torch.Tensor]:
        return [p.clone() for p in [*model.target_actor.parameters(), *model.target_critics.parameters()]]

    moved = []
    for update in range(7):
        if update == 4:  # this update is skipped (nonfinite: skip): no target update counts it
            model.skipped_updates += 1
        before = targets()
        hook.on_post_optim(None, model)  # type: ignore[arg-type]
        moved.append([not torch.equal(a, b) for a, b in zip(before, targets(), strict=True)])
    if cls is TD3:  # applied updates 1, 2, 3, 4, (skipped), 5, 6: the targets move after the 3rd and the 6th
        assert [all(m) for m in moved] == [False, False, True, False, False, False, True]
        assert [any(m) for m in moved] == [False, False, True, False, False, False, True]
    else:
        assert [all(m) for m in moved] == [True, True, True, True, False, True, True]
        assert [any(m) for m in moved] == [True, True, True, True, False, True, True]
    online = [*model.actor.parameters(), *model.critics.parameters()]
    for target, source in zip(targets(), online, strict=True):
        assert not torch.equal(target, source)  # Polyak steps, not copies


# -- exploration ------------------------------------------------------------------------------------------


def test_deterministic_actions_are_the_actors_and_exploration_stays_within_the_bounds() -> None:
    model = td3(exploration_noise=2.0)  # large: many noisy actions land beyond the bounds and are clipped
    observation = torch.randn(500, 3)
    low, high = model.action_low, model.action_high
    with torch.no_grad():
        expected = low.double() + (actor_by_hand(model.actor, observation) + 1) * 0.5 * (high - low).double()
        deterministic = model.policy(observation, deterministic=True)
        explored = model.policy(observation, deterministic=False)
    torch.testing.assert_close(deterministic, expected.float())
    assert ((explored >= low) & (explored <= high)).all()
    assert (explored == low).any(dim=0).all() and (explored == high).any(dim=0).all()  # clipped in each dim
    assert (explored != deterministic).float().mean() > 0.5


def test_exploration_noise_is_gaussian_in_the_unit_scale() -> None:
    model = TD3(OBSERVATIONS, ACTIONS, hidden_sizes=[8], exploration_noise=0.1)
    last = model.actor[-2]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()  # the actor's action: 0 in the unit scale, the middle of the bounds
        torch.manual_seed(0)
        explored = model.policy(torch.randn(20_000, 3), deterministic=False)
    unit = 2 * (explored - model.action_low) / (model.action_high - model.action_low) - 1
    torch.testing.assert_close(unit.std(0), torch.full((2,), 0.1), atol=3e-3, rtol=0)
    torch.testing.assert_close(unit.mean(0), torch.zeros(2), atol=3e-3, rtol=0)
    quiet = TD3(OBSERVATIONS, ACTIONS, hidden_sizes=[8], exploration_noise=0.0)
    observation = torch.randn(8, 3)
    assert torch.equal(quiet.policy(observation, False), quiet.policy(observation, True))


# -- bad input ----------------------------------------------------------------------------------------------

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (TD3, {"lr": 0.0}, r"lr=0.0 is invalid: expected a value > 0"),
        (TD3, {"actor_lr": -1.0}, r"actor_lr=-1.0 is invalid: expected a value > 0\..*null for lr"),
        (DDPG, {"critic_lr": INF}, r"critic_lr=inf is invalid: expected a finite value > 0"),
        (TD3, {"policy_delay": 0}, r"policy_delay=0 is invalid: expected an integer >= 1"),
        (TD3, {"policy_delay": 1.5}, r"policy_delay=1.5 is invalid: expected an integer >= 1"),
        (TD3, {"target_policy_noise": -0.1}, r"target_policy_noise=-0.1 is invalid: expected a value >= 0"),
        (TD3, {"target_noise_clip": NAN}, r"target_noise_clip=nan is invalid: expected a value >= 0"),
        (DDPG, {"exploration_noise": INF}, r"exploration_noise=inf is invalid: expected a finite value >= 0"),
        (TD3, {"hidden_sizes": [-1]}, r"hidden_sizes=\[-1\] is invalid: expected a list of positive"),
        (DDPG, {"activation": "sigmoid"}, r"activation='sigmoid' is invalid"),
        (TD3, {"tau": 0.0}, r"tau=0.0 is invalid: expected a value in \(0.0, 1.0\]"),
        (DDPG, {"buffer_size": 100}, r"buffer_size=100 is smaller than batch_size=256"),
        (TD3, {"gamma": 1.5}, r"gamma=1.5 is invalid"),
    ],
)
def test_bad_values_are_refused(cls: type[TD3], options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(OBSERVATIONS, ACTIONS, **options)


@pytest.mark.parametrize("cls", [TD3, DDPG])
@pytest.mark.parametrize(
    "space", [gym.spaces.Discrete(2), gym.spaces.Box(-np.inf, np.inf, (1,))], ids=["discrete", "unbounded"]
)
def test_discrete_and_unbounded_action_spaces_are_refused(cls: type[TD3], space: gym.Space) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__} needs a bounded 1-D Box action space; the env has"):
        cls(OBSERVATIONS, space)


def test_signatures_show_each_algorithms_own_arguments() -> None:
    """LightningCLI builds its options from the signatures: DDPG has none of TD3's additions, and neither shows the
    base's target_update_interval (TD3's targets move with its actor) or a critic count."""
    td3_args = set(inspect.signature(TD3).parameters)
    ddpg_args = set(inspect.signature(DDPG).parameters)
    assert {"policy_delay", "target_policy_noise", "target_noise_clip"} <= td3_args
    assert td3_args - ddpg_args == {"policy_delay", "target_policy_noise", "target_noise_clip"}
    assert not {"target_update_interval", "n_critics"} & td3_args
    with pytest.raises(TypeError, match="policy_delay"):
        DDPG(OBSERVATIONS, ACTIONS, policy_delay=2)  # type: ignore[call-arg]


# -- smoke fits -------------------------------------------------------------------------------------------


def tiny_run(
    cls: type[TD3], tmp_path: Path, model: dict[str, Any] | None = None, **trainer: Any
) -> tuple[pl.Trainer, TD3]:
    """8 batches of 32 Pendulum transitions (2 envs), the first 2 random, tiny networks."""
    pl.seed_everything(0)
    data = RLDataModule("Pendulum-v1", num_envs=2, frames_per_batch=32, total_frames=256, eval_episodes=2)
    module = cls(
        data.observation_space,
        data.action_space,
        **{"hidden_sizes": [16], "batch_size": 32, "buffer_size": 1000, "init_random_frames": 64, **(model or {})},
    )
    built = quiet_trainer(tmp_path, **{"log_every_n_steps": 1, **trainer})
    built.fit(module, datamodule=data)
    return built, module


@pytest.mark.parametrize("cls", [TD3, DDPG])
def test_fit_trains_the_actor_every_policy_delay_updates_and_moves_the_targets(cls: type[TD3], tmp_path: Path) -> None:
    trainer, model = tiny_run(cls, tmp_path, model={"utd_ratio": 0.5})
    assert model.frames == 256 and model.updates == 6 * 16  # 6 learning batches of 32 transitions, utd 0.5
    assert trainer.global_step == model.updates  # one Adam step per update, a group each for actor and critics
    assert len(model.critics) == (2 if cls is TD3 else 1)
    for key in ("train/loss_actor", "train/loss_qvalue", "train/q_mean", "val/episode_return"):
        assert key in trainer.callback_metrics, key
    optimizer = model.optimizers().optimizer  # type: ignore[union-attr]
    actor_steps = {float(optimizer.state[p]["step"]) for p in model.actor.parameters()}
    assert actor_steps == {model.updates / model.policy_delay}
    assert model.target_updater.updates == model.updates
    for online, target in model.target_networks()[1:]:  # (not the flat encoder: no parameters) moved, not all the way
        assert not torch.equal(torch.cat([p.flatten() for p in online.parameters()]),
                               torch.cat([p.flatten() for p in target.parameters()]))  # fmt: skip


def test_td3_fit_with_prioritized_n_step_replay(tmp_path: Path) -> None:
    _, model = tiny_run(TD3, tmp_path, model={"prioritized": True, "n_step": 3})
    assert model.updates > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("cls", [TD3, DDPG])
def test_checkpoint_reloads_with_the_algorithms_own_hyperparameters(cls: type[TD3], tmp_path: Path) -> None:
    trainer, model = tiny_run(cls, tmp_path, model={"exploration_noise": 0.3, "tau": 0.01})
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = cls.load_from_checkpoint(tmp_path / "model.ckpt")
    assert type(restored) is cls
    assert set(restored.hparams) == set(inspect.signature(cls).parameters)  # DDPG's arguments, not TD3's
    assert (restored.exploration_noise, restored.target_updater.tau) == (0.3, 0.01)
    assert (restored.policy_delay, len(restored.critics)) == ((2, 2) if cls is TD3 else (1, 1))
    assert restored.frames == model.frames and restored.updates == model.updates
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    other = DDPG if cls is TD3 else TD3
    with pytest.raises(ValueError, match=f"holds a {cls.__name__} model and cannot be loaded into {other.__name__}"):
        other.load_from_checkpoint(tmp_path / "model.ckpt", strict=False)


# -- learning -------------------------------------------------------------------------------------------------


@pytest.mark.learning
@pytest.mark.parametrize("config", ["td3.yaml", "ddpg.yaml"])
def test_reaches_minus_200_on_pendulum_within_20000_frames(config: str, tmp_path: Path) -> None:
    # the run ends at the first evaluation above -200 (about 3,000 frames in with the shipped configs and seed)
    run = fit_config(config, tmp_path, stop_at(-200.0))
    assert run.trainer.log_dir is not None
    with open(Path(run.trainer.log_dir) / "metrics.csv") as f:
        evaluations = [
            (float(r["step"]), float(r["val/episode_return"])) for r in csv.DictReader(f) if r["val/episode_return"]
        ]
    assert any(frames <= 20_000 and value >= -200.0 for frames, value in evaluations), evaluations

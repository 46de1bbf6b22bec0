"""PPO on CartPole-v1: ``examples/torchrl_ppo_original.py`` (torchrl's ``Trainer``) ported to rl_lightning.

    .venv-torchrl/bin/python examples/torchrl_ppo.py [--total-frames 100000]

The torchrl parts (policy, ``ClipPPOLoss``, ``GAE``) and the functions given to ``trainer.register_op`` are unchanged;
the collector, optimizer and ``Trainer`` become an ``RLDataModule``, a ``TorchRLModule`` and a Lightning ``Trainer``
with one ``FunctionHook`` per registered function (``convention="torchrl"``: the arguments torchrl passes).
``TorchRLPPO`` below is the same model as a class with typed hyperparameters, which is how the CLI reaches it (run from
the repository root, so that ``examples`` imports):

    .venv-torchrl/bin/python -m rl_lightning fit --config configs/torchrl_ppo.yaml

Needs torchrl (``bash scripts/setup_torchrl.sh``).
"""

import argparse

import gymnasium as gym
import torch
from lightning.pytorch.loggers import CSVLogger
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import nn
from torch.distributions import Categorical
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from rl_lightning import FunctionHook, RLDataModule, make_trainer
from rl_lightning.interop.torchrl_module import TorchRLModule
from rl_lightning.spaces import SpaceLike, space_from_dict

REWARD_SCALE = 0.1
"""CartPole's +1 per step, scaled so that the value targets stay small."""


def make_ppo(
    hidden: int = 64, gamma: float = 0.98, lmbda: float = 0.8, clip_epsilon: float = 0.2, n_obs: int = 4, n_act: int = 2
) -> tuple[ProbabilisticActor, ClipPPOLoss, GAE]:
    """The policy, the PPO loss and the advantage estimator (by default for CartPole: 4 observations, 2 actions)."""
    actor_net = nn.Sequential(
        nn.Linear(n_obs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_act)
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=Categorical,
        return_log_prob=True,
    )
    critic_net = nn.Sequential(
        nn.Linear(n_obs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
    )
    critic = ValueOperator(critic_net, in_keys=["observation"])
    loss = ClipPPOLoss(
        actor, critic, clip_epsilon=clip_epsilon, entropy_coeff=0.0, critic_coeff=0.5, loss_critic_type="l2",
        normalize_advantage=True,
    )  # fmt: skip
    return actor, loss, GAE(gamma=gamma, lmbda=lmbda, value_network=critic)


# The functions registered with trainer.register_op(...).


def scale_reward(batch: TensorDictBase) -> TensorDictBase:
    """batch_process: scales the collected rewards before the advantages are computed."""
    batch.set(("next", "reward"), batch.get(("next", "reward")) * REWARD_SCALE)
    return batch


def log_batch_reward(batch: TensorDictBase) -> dict:
    """pre_steps_log: the mean (scaled) reward of the collected batch."""
    return {"batch_reward": batch.get(("next", "reward")).mean().item(), "log_pbar": True}


def log_advantage(batch: TensorDictBase) -> dict:
    """post_optim_log: the mean absolute advantage of the minibatch just trained on."""
    return {"abs_advantage": batch.get("advantage").abs().mean().item()}


def main(total_frames: int, root: str) -> TorchRLModule:
    torch.manual_seed(0)
    actor, loss, gae = make_ppo()
    data = RLDataModule("CartPole-v1", num_envs=8, frames_per_batch=256, total_frames=total_frames, seed=0)
    model = TorchRLModule(
        data.observation_space,
        data.action_space,
        loss,
        policy=actor,
        advantage=gae,  # run on each collected batch, after the batch_process hooks
        lr=1e-3,
        n_epochs=20,  # 20 epochs over the whole batch of 256 transitions
        max_grad_norm=0.5,
    )
    trainer = make_trainer(
        logger=CSVLogger(root, name="ppo_cartpole"),
        enable_progress_bar=False,
        log_every_n_steps=10,  # collector batches: torchrl's log_interval=2560 frames
        callbacks=[
            FunctionHook("batch_process", scale_reward, convention="torchrl"),
            FunctionHook("pre_steps_log", log_batch_reward, convention="torchrl"),
            FunctionHook("post_optim_log", log_advantage, convention="torchrl"),
        ],
    )
    trainer.fit(model, datamodule=data)
    return model


class TorchRLPPO(TorchRLModule):
    """:func:`make_ppo`'s torchrl PPO as a model class: typed hyperparameters, the torchrl parts built in ``__init__``.

    ``configs/torchrl_ppo.yaml`` names it by its import path, and its hyperparameters are all a checkpoint needs:
    ``TorchRLPPO.load_from_checkpoint(path)`` builds the torchrl modules again and loads their weights.

    Args:
        observation_space: the env's observation space, a flat ``Box`` (the CLI links it from the data).
        action_space: the env's action space, ``Discrete`` (the CLI links it from the data).
        hidden: units of the actor's and the critic's two hidden layers.
        gamma: discount factor of ``GAE``.
        lmbda: ``GAE``'s lambda.
        clip_epsilon: ``ClipPPOLoss``'s clipping range of the probability ratio.
        lr: Adam's learning rate.
        n_epochs: passes over each collector batch.
        batch_size: transitions per optimizer step; must divide a collector batch's transitions. ``None``: the
            whole batch.
        max_grad_norm: clip the global gradient norm to this value (``None``: no clipping).
    """

    def __init__(
        self,
        observation_space: SpaceLike | None,
        action_space: SpaceLike | None,
        hidden: int = 64,
        gamma: float = 0.98,
        lmbda: float = 0.8,
        clip_epsilon: float = 0.2,
        lr: float = 1e-3,
        n_epochs: int = 20,
        batch_size: int | None = None,
        max_grad_norm: float | None = 0.5,
    ) -> None:
        if observation_space is None or action_space is None:
            raise ValueError(
                "TorchRLPPO needs observation_space and action_space. The CLI links them from the data; in Python "
                "pass them from the DataModule: TorchRLPPO(data.observation_space, data.action_space, ...)."
            )
        observation, action = space_from_dict(observation_space), space_from_dict(action_space)
        if not (isinstance(observation, gym.spaces.Box) and len(observation.shape) == 1):
            raise ValueError(f"TorchRLPPO needs a flat Box observation space, got {observation}. Use e.g. CartPole-v1.")
        if not isinstance(action, gym.spaces.Discrete):
            raise ValueError(f"TorchRLPPO needs a Discrete action space, got {action}. Use e.g. CartPole-v1.")
        actor, loss, gae = make_ppo(hidden, gamma, lmbda, clip_epsilon, observation.shape[0], int(action.n))
        super().__init__(
            observation_space,
            action_space,
            loss,
            policy=actor,
            advantage=gae,
            lr=lr,
            n_epochs=n_epochs,
            batch_size=batch_size,
            max_grad_norm=max_grad_norm,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total-frames", type=int, default=100_000)
    parser.add_argument("--root", default="runs/example_torchrl_ppo")
    args = parser.parse_args()
    main(args.total_frames, args.root)

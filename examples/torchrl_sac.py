"""SAC on Pendulum-v1 with torchrl's ``SACLoss``, trained by rl_lightning's off-policy loop.

    .venv-torchrl/bin/python examples/torchrl_sac.py [--total-frames 20000]

The torchrl parts (a tanh-Gaussian ``ProbabilisticActor``, twin Q ``ValueOperator``, ``SACLoss``, ``SoftUpdate``) as a
torchrl user writes them, in a ``TorchRLOffPolicyModule``: rl_lightning's replay buffer, warm-up and update schedule.
``TorchRLSAC`` is the same model as a class with typed hyperparameters, which is how the CLI reaches it (run from
the repository root, so that ``examples`` imports):

    .venv-torchrl/bin/python -m rl_lightning fit --config configs/torchrl_sac.yaml

Needs torchrl (``bash scripts/setup_torchrl.sh``).
"""

import argparse

import gymnasium as gym
import torch
from lightning.pytorch.loggers import CSVLogger
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

from rl_lightning import RLDataModule, make_trainer
from rl_lightning.interop.torchrl_off_policy import TorchRLOffPolicyModule
from rl_lightning.spaces import SpaceLike, space_from_dict


def make_sac(
    observation_space: gym.spaces.Box,
    action_space: gym.spaces.Box,
    hidden: int = 64,
    gamma: float = 0.99,
    tau: float = 0.005,
    init_alpha: float = 1.0,
) -> tuple[SACLoss, SoftUpdate]:
    """SAC's loss over a tanh-Gaussian actor and twin Q networks (``hidden`` units, two ReLU layers each), and the
    soft update of its target Q networks."""
    n_obs, n_act = observation_space.shape[0], action_space.shape[0]
    spec = Bounded(torch.as_tensor(action_space.low), torch.as_tensor(action_space.high), (n_act,))
    actor_net = nn.Sequential(
        MLP(in_features=n_obs, out_features=2 * n_act, num_cells=[hidden, hidden], activation_class=nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0"),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )
    qvalue = ValueOperator(
        MLP(in_features=n_obs + n_act, out_features=1, num_cells=[hidden, hidden], activation_class=nn.ReLU),
        in_keys=["observation", "action"],
    )
    loss = SACLoss(actor, qvalue, num_qvalue_nets=2, loss_function="l2", alpha_init=init_alpha, action_spec=spec)
    loss.make_value_estimator(gamma=gamma)
    return loss, SoftUpdate(loss, tau=tau)


class TorchRLSAC(TorchRLOffPolicyModule):
    """:func:`make_sac`'s torchrl SAC as a model class: typed hyperparameters, the torchrl parts built in ``__init__``.

    ``configs/torchrl_sac.yaml`` names it by its import path; ``TorchRLSAC.load_from_checkpoint(path)`` builds the
    torchrl modules again from the hyperparameters and loads their weights.

    Args:
        observation_space: the env's observation space, a flat ``Box`` (the CLI links it from the data).
        action_space: the env's action space, a bounded flat ``Box`` (the CLI links it from the data).
        hidden: units of the two hidden layers of the actor and of each Q network.
        lr: Adam's learning rate (actor, Q networks and temperature).
        gamma: discount factor.
        tau: soft target update rate.
        init_alpha: initial temperature.
        batch_size: transitions per replay sample (one update).
        buffer_size: replay capacity in transitions.
        init_random_frames: frames collected with uniform random actions before learning starts.
        utd_ratio: updates per collected transition.
    """

    def __init__(
        self,
        observation_space: SpaceLike | None,
        action_space: SpaceLike | None,
        hidden: int = 64,
        lr: float = 1e-3,
        gamma: float = 0.99,
        tau: float = 0.005,
        init_alpha: float = 1.0,
        batch_size: int = 256,
        buffer_size: int = 100_000,
        init_random_frames: int = 1000,
        utd_ratio: float = 1.0,
    ) -> None:
        if observation_space is None or action_space is None:
            raise ValueError(
                "TorchRLSAC needs observation_space and action_space. The CLI links them from the data; in Python "
                "pass them from the DataModule: TorchRLSAC(data.observation_space, data.action_space, ...)."
            )
        observation, action = space_from_dict(observation_space), space_from_dict(action_space)
        if not (isinstance(observation, gym.spaces.Box) and len(observation.shape) == 1):
            raise ValueError(f"TorchRLSAC needs a flat Box observation space, got {observation}. Use e.g. Pendulum-v1.")
        if not (isinstance(action, gym.spaces.Box) and len(action.shape) == 1 and action.is_bounded()):
            raise ValueError(f"TorchRLSAC needs a bounded flat Box action space, got {action}. Use e.g. Pendulum-v1.")
        loss, updater = make_sac(observation, action, hidden, gamma, tau, init_alpha)
        super().__init__(
            observation_space,
            action_space,
            loss,
            lr=lr,
            target_updater=updater,
            batch_size=batch_size,
            buffer_size=buffer_size,
            init_random_frames=init_random_frames,
            utd_ratio=utd_ratio,
        )


def main(total_frames: int, root: str) -> TorchRLSAC:
    torch.set_num_threads(1)  # small networks on a few CPU cores: one thread is fastest (the CLI's torch_threads)
    torch.manual_seed(0)
    data = RLDataModule("Pendulum-v1", num_envs=4, frames_per_batch=64, total_frames=total_frames, seed=0)
    model = TorchRLSAC(data.observation_space, data.action_space, init_random_frames=min(1000, total_frames // 2))
    trainer = make_trainer(logger=CSVLogger(root, name="sac_pendulum"), enable_progress_bar=False)
    trainer.fit(model, datamodule=data)
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total-frames", type=int, default=20_000)
    parser.add_argument("--root", default="runs/example_torchrl_sac")
    args = parser.parse_args()
    main(args.total_frames, args.root)

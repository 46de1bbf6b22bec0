"""Offline RL on Pendulum-v1: torchrl's ``IQLLoss`` trained from a dataset that a noisy rl_lightning TD3 recorded.

    .venv-torchrl/bin/python examples/torchrl_offline_iql.py [--dataset data/pendulum_td3] [--total-frames 1024000]

1. Unless ``--dataset`` holds a dataset already: trains rl_lightning's TD3 for ``--behaviour-frames`` frames and
   records ``--transitions`` transitions of it, with Gaussian noise of ``--noise-std`` (in half action ranges), into
   ``--dataset`` (:func:`rl_lightning.offline.generate_dataset`). Its ``dataset.json`` holds the data's mean return.
2. Trains IQL (actor, Q and value networks, ``IQLLoss``, ``SoftUpdate``) in a ``TorchRLModule`` on the stored
   transitions (:class:`rl_lightning.offline.OfflineDataModule`: no env stepped for training) for ``--total-frames``
   transitions, 10 updates of 256 per batch of 2,560, evaluating the deterministic policy in the env every 250
   updates. ``frames`` (the curves' x-axis) counts transitions trained on.

With the defaults the data's episodes return about -760 and IQL about -300 after 2,500 updates
(``tests/test_torchrl_offline.py`` runs this). Needs torchrl (``bash scripts/setup_torchrl.sh``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import IQLLoss, SoftUpdate

from rl_lightning import TD3, RLDataModule, make_trainer
from rl_lightning.interop.torchrl_module import TorchRLModule
from rl_lightning.offline import INFO_FILE, OfflineDataModule, generate_dataset, read_dataset_info
from rl_lightning.spaces import SpaceLike, space_from_dict

ACTION_BOUND = 2.0
"""Pendulum's torque limit."""


def mlp(inputs: int, outputs: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


class QNetwork(nn.Module):
    """Q(s, a) from the concatenated observation and action."""

    def __init__(self, observation_size: int = 3, action_size: int = 1) -> None:
        super().__init__()
        self.net = mlp(observation_size + action_size, 1)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([observation, action], -1))


def make_iql(
    temperature: float = 3.0,
    expectile: float = 0.7,
    gamma: float = 0.99,
    tau: float = 0.005,
    observation_size: int = 3,
    action_size: int = 1,
    action_bound: float = ACTION_BOUND,
) -> tuple[IQLLoss, SoftUpdate]:
    """IQL for Pendulum (or another flat Box env with symmetric action bounds) as a torchrl user writes it: a
    TanhNormal actor, a Q network (twinned by the loss) and a state-value network, the loss and the soft update of its
    target Q networks.

    The actor's support reaches a little past the action bound: a noisy behaviour policy's actions are clipped to the
    bounds, so many stored actions lie exactly on them, where a TanhNormal bounded there has no density (its
    log-probability, which IQL's actor loss weighs, would be -inf). The env takes the evaluated actions clipped to
    the bounds (the collector and ``RLModule.forward`` clip them)."""
    support = action_bound * 1.05
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(mlp(observation_size, 2 * action_size), NormalParamExtractor()),
            ["observation"],
            ["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -support, "high": support},
    )
    qvalue = ValueOperator(QNetwork(observation_size, action_size), in_keys=["observation", "action"])
    value = ValueOperator(mlp(observation_size, 1), in_keys=["observation"])
    loss = IQLLoss(actor, qvalue, value, temperature=temperature, expectile=expectile, loss_function="l2")
    loss.make_value_estimator(gamma=gamma)
    return loss, SoftUpdate(loss, tau=tau)


class TorchRLIQL(TorchRLModule):
    """:func:`make_iql`'s torchrl IQL as a model class: typed hyperparameters, the torchrl parts built in
    ``__init__``, so ``configs/torchrl_iql.yaml`` names it by its import path and a checkpoint's hyperparameters are
    all ``TorchRLIQL.load_from_checkpoint(path)`` and ``rl-lightning predict --ckpt_path`` need.

    Args:
        observation_space: the env's observation space, a flat ``Box`` (the CLI links it from the data).
        action_space: the env's action space, a ``Box`` with symmetric bounds (the CLI links it from the data).
        temperature: IQL's inverse temperature of the advantage-weighted actor loss.
        expectile: IQL's expectile of the value loss.
        gamma: discount factor.
        tau: the target Q networks' soft-update rate.
        lr: Adam's learning rate.
        batch_size: transitions per update; must divide a training batch's transitions.
    """

    def __init__(
        self,
        observation_space: SpaceLike | None,
        action_space: SpaceLike | None,
        temperature: float = 3.0,
        expectile: float = 0.7,
        gamma: float = 0.99,
        tau: float = 0.005,
        lr: float = 1e-3,
        batch_size: int = 256,
    ) -> None:
        if observation_space is None or action_space is None:
            raise ValueError(
                "TorchRLIQL needs observation_space and action_space. The CLI links them from the data; in Python "
                "pass them from the DataModule: TorchRLIQL(data.observation_space, data.action_space, ...)."
            )
        observation, action = space_from_dict(observation_space), space_from_dict(action_space)
        if not (isinstance(observation, gym.spaces.Box) and len(observation.shape) == 1):
            raise ValueError(f"TorchRLIQL needs a flat Box observation space, got {observation}. Use e.g. Pendulum-v1.")
        if not (isinstance(action, gym.spaces.Box) and len(action.shape) == 1 and np.all(action.high == -action.low)):
            raise ValueError(f"TorchRLIQL needs a Box action space with bounds -b..b, got {action}.")
        loss, updater = make_iql(
            temperature, expectile, gamma, tau, observation.shape[0], action.shape[0], float(action.high.max())
        )
        super().__init__(observation_space, action_space, loss, lr=lr, batch_size=batch_size, target_updater=updater)


def record_behaviour(
    dataset: Path, root: Path, behaviour_frames: int, transitions: int, noise_std: float, seed: int = 0
) -> float:
    """Trains rl_lightning's TD3 on Pendulum (configs/td3.yaml's settings) and records it with noise into ``dataset``;
    returns the data's mean episode return."""
    data = RLDataModule("Pendulum-v1", num_envs=4, frames_per_batch=64, total_frames=behaviour_frames, seed=seed)
    td3 = TD3(
        data.observation_space,
        data.action_space,
        lr=1e-3,
        batch_size=128,
        buffer_size=behaviour_frames,
        init_random_frames=min(1_000, behaviour_frames // 2),
        tau=0.02,
        hidden_sizes=[64, 64],
        exploration_noise=0.1,
    )
    trainer = make_trainer(
        accelerator="cpu", default_root_dir=root, logger=False, enable_checkpointing=False, limit_val_batches=0
    )
    trainer.fit(td3, datamodule=data)
    info = generate_dataset(td3, dataset, "Pendulum-v1", transitions, noise_std=noise_std, num_envs=8, seed=seed)
    return info.behaviour_mean_return


def main(argv: list[str] | None = None) -> tuple[TorchRLIQL, OfflineDataModule] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="data/pendulum_td3", help="the dataset directory (made if missing)")
    parser.add_argument("--behaviour-frames", type=int, default=8_000, help="TD3's training frames")
    parser.add_argument("--transitions", type=int, default=9_600, help="transitions recorded (a multiple of 8)")
    parser.add_argument("--noise-std", type=float, default=2.0, help="behaviour noise, in half action ranges")
    parser.add_argument("--total-frames", type=int, default=4_000 * 256, help="transitions IQL trains on")
    parser.add_argument("--frames-per-batch", type=int, default=2_560, help="transitions per training batch")
    parser.add_argument("--eval-every", type=int, default=25, help="training batches between evaluations")
    parser.add_argument("--root", default="runs", help="where the logs and checkpoints go")
    parser.add_argument("--record-only", action="store_true", help="record the dataset, train nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small networks on a few CPU cores: one thread is fastest

    dataset = Path(args.dataset)
    if not (dataset / INFO_FILE).is_file():
        torch.manual_seed(0)
        record_behaviour(dataset, Path(args.root), args.behaviour_frames, args.transitions, args.noise_std)
    info = read_dataset_info(dataset)
    print(f"{dataset}: {info.transitions} transitions of {info.policy}, mean return {info.behaviour_mean_return:.1f}")
    if args.record_only:
        return None

    torch.manual_seed(0)
    data = OfflineDataModule(
        str(dataset), frames_per_batch=args.frames_per_batch, total_frames=args.total_frames, eval_episodes=10
    )
    model = TorchRLIQL(data.observation_space, data.action_space)
    trainer = make_trainer(
        accelerator="cpu",
        default_root_dir=args.root,
        val_check_interval=min(args.eval_every, data.num_batches),
        log_every_n_steps=min(10, data.num_batches),
        logger=CSVLogger(args.root, name="offline_iql"),
    )
    trainer.fit(model, datamodule=data)
    print(f"IQL: {float(trainer.callback_metrics['val/episode_return']):.1f} after {model.updates} updates")
    return model, data


if __name__ == "__main__":
    main()

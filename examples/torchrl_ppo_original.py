"""PPO on CartPole-v1 with torchrl's own ``Trainer``: the script that ``examples/torchrl_ppo.py`` ports to rl_lightning.

    .venv-torchrl/bin/python examples/torchrl_ppo_original.py [--total-frames 100000]

Needs torchrl (``bash scripts/setup_torchrl.sh``). ``diff -u examples/torchrl_ppo_original.py examples/torchrl_ppo.py``
is the port.
"""

import argparse

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import nn
from torch.distributions import Categorical
from torchrl.collectors import Collector
from torchrl.envs import GymEnv, SerialEnv
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE
from torchrl.record.loggers.csv import CSVLogger
from torchrl.trainers import Trainer, UpdateWeights

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


def main(total_frames: int, root: str) -> Trainer:
    torch.manual_seed(0)
    actor, loss, gae = make_ppo()
    env = SerialEnv(8, lambda: GymEnv("CartPole-v1"))
    env.set_seed(0)
    collector = Collector(env, actor, frames_per_batch=256, total_frames=total_frames)
    trainer = Trainer(
        collector=collector,
        total_frames=total_frames,
        frame_skip=1,
        loss_module=loss,
        optimizer=torch.optim.Adam(loss.parameters(), lr=1e-3),
        optim_steps_per_batch=20,  # 20 epochs over the whole batch of 256 transitions
        clip_grad_norm=True,
        clip_norm=0.5,
        logger=CSVLogger("ppo_cartpole", log_dir=root),
        progress_bar=False,
        log_interval=2560,
    )
    trainer.register_op("batch_process", scale_reward)
    trainer.register_op("batch_process", gae)  # the advantages of each collected batch
    trainer.register_op("pre_steps_log", log_batch_reward)
    trainer.register_op("post_optim_log", log_advantage)
    UpdateWeights(collector, update_weights_interval=1).register(trainer)
    trainer.train()
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total-frames", type=int, default=100_000)
    parser.add_argument("--root", default="runs/example_torchrl_ppo_original")
    args = parser.parse_args()
    main(args.total_frames, args.root)

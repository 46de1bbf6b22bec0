"""A custom hook: torchrl's ``LoggingHook`` example, ported to an ``RLCallback``.

torchrl registers it with ``trainer.register_op("post_optim_log", hook)``; here it is a Lightning callback
whose ``on_post_optim_log`` returns a dict every tenth call, and the module logs it.

    python examples/custom_hook.py [--total-frames 20000]
"""

import argparse
from typing import Any

import lightning.pytorch as pl
from tensordict import TensorDict

from rl_lightning import PPO, FunctionHook, RLCallback, RLDataModule, keys, make_trainer


class LoggingHook(RLCallback):
    """Logs the mean absolute advantage of the current minibatch every ``interval`` optimizer steps."""

    def __init__(self, interval: int = 10) -> None:
        self.interval = interval
        self.counter = 0

    def on_post_optim_log(self, trainer: pl.Trainer, module: Any, batch: TensorDict) -> dict[str, Any] | None:
        self.counter += 1
        if self.counter % self.interval == 0:
            return {"custom/abs_advantage": batch[keys.ADVANTAGE].abs().mean(), "log_pbar": True}
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"counter": self.counter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counter = state_dict["counter"]


def mean_reward(batch: TensorDict) -> dict[str, float]:
    """The same idea as a plain function, attached like torchrl's ``register_op``."""
    return {"custom/batch_reward": batch[keys.NEXT_REWARD].mean().item()}


def main(total_frames: int, root: str) -> pl.Trainer:
    data = RLDataModule("CartPole-v1", num_envs=8, frames_per_batch=256, total_frames=total_frames)
    model = PPO(data.observation_space, data.action_space, n_epochs=4, batch_size=64)
    trainer = make_trainer(
        default_root_dir=root,
        callbacks=[LoggingHook(interval=10), FunctionHook("pre_steps_log", mean_reward)],
    )
    trainer.fit(model, datamodule=data)
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total-frames", type=int, default=20_000)
    parser.add_argument("--root", default="runs/example_hook")
    args = parser.parse_args()
    main(args.total_frames, args.root)

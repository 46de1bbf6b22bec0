"""Train PPO on CartPole from Python, with a Lightning checkpoint and early stopping when solved.

python examples/train_ppo.py [--total-frames 100000]
"""

import argparse

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from rl_lightning import PPO, RLDataModule, make_trainer


def main(total_frames: int, root: str) -> PPO:
    data = RLDataModule("CartPole-v1", num_envs=8, frames_per_batch=256, total_frames=total_frames, seed=0)
    model = PPO(data.observation_space, data.action_space, lr=1e-3, gamma=0.98, gae_lambda=0.8,
                n_epochs=20, batch_size=256)  # fmt: skip
    trainer = make_trainer(
        default_root_dir=root,
        callbacks=[
            # the best evaluation: weights and hyperparameters, to deploy (PPO.load_from_checkpoint) or evaluate
            ModelCheckpoint(
                monitor="val/episode_return", mode="max", save_weights_only=True, filename="best-{frames:.0f}"
            ),
            # last.ckpt: everything a resume needs (trainer.fit(..., ckpt_path=".../last.ckpt"))
            ModelCheckpoint(save_top_k=1, save_last="link", filename="latest-{frames:.0f}"),
            EarlyStopping(monitor="val/episode_return", mode="max", stopping_threshold=475.0, patience=10**6),
        ],
    )
    trainer.fit(model, datamodule=data)
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total-frames", type=int, default=100_000)
    parser.add_argument("--root", default="runs/example_ppo")
    args = parser.parse_args()
    main(args.total_frames, args.root)

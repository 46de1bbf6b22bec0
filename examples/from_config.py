"""Build trainer, model and data from a YAML config (as ``rl-lightning fit`` does), then adjust and fit.

python examples/from_config.py [--config configs/ppo.yaml] [--total-frames 100000]
"""

import argparse

from rl_lightning import build

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/ppo.yaml")
    parser.add_argument("--total-frames", type=int, default=100_000)
    parser.add_argument("--root", default="runs")
    args = parser.parse_args()
    trainer, model, data = build(
        args.config,
        [f"--data.total_frames={args.total_frames}", f"--trainer.logger.init_args.save_dir={args.root}"],
    )
    trainer.fit(model, datamodule=data)
    print(f"trained for {model.frames} frames, {model.updates} updates")

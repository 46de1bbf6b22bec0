"""Drive a gymnasium env with an exported policy, using only onnxruntime, numpy and gymnasium (no torch).

rl-lightning export --ckpt_path runs/ppo_cartpole/version_0/checkpoints/last.ckpt --output policy.onnx
python examples/deploy_onnx.py --policy policy.onnx --env-id CartPole-v1 --episodes 5

The exported program takes a batch of raw observations (input ``observation``, any batch size) and returns the env's
actions (output ``action``): observation normalization, action scaling and clipping are inside it.
"""

import argparse

import gymnasium as gym
import numpy as np
import onnxruntime


def run(policy: str, env_id: str, episodes: int, seed: int) -> list[float]:
    session = onnxruntime.InferenceSession(policy, providers=["CPUExecutionProvider"])
    dtype = np.float32 if session.get_inputs()[0].type == "tensor(float)" else np.int64
    env = gym.make(env_id)
    returns = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            batch = np.asarray(observation, dtype=dtype)[None]  # a batch of one
            action = session.run(["action"], {"observation": batch})[0][0]
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        print(f"episode {episode + 1}: return {total:.1f}")
    env.close()
    print(f"mean return over {episodes} episodes: {np.mean(returns):.1f}")
    return returns


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="policy.onnx", help="the .onnx file of rl-lightning export")
    parser.add_argument("--env-id", default="CartPole-v1", help="the gymnasium env the policy was trained on")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.policy, args.env_id, args.episodes, args.seed)

"""Latency of a trained policy's call: ``model.predict``, the TorchScript export and the ONNX export under
onnxruntime, for one observation and a batch of 64, with PPO's CartPole policy and SAC's Pendulum policy.

python benchmarks/inference.py [--rounds 7] [--calls 2000] [--threads 1]

Each policy is built from its config (configs/ppo.yaml, configs/sac.yaml: the same networks a fit trains), exported
with ``rl_lightning.export.export_policy``, and called on real env observations (numpy in, numpy out on every side).
The sides alternate in rounds; each figure is the median over rounds of the mean time per call in a round. The
ratios are predict's time over each export's. The weights are the untrained ones: a call costs the same.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime
import torch

from rl_lightning import build
from rl_lightning.export import export_policy

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {
    "PPO CartPole-v1": ("configs/ppo.yaml", "CartPole-v1"),
    "SAC Pendulum-v1": ("configs/sac.yaml", "Pendulum-v1"),
}


def _observations(env_id: str, count: int) -> np.ndarray:
    env = gym.make(env_id)
    observation, _ = env.reset(seed=0)
    seen = []
    for _ in range(count):
        seen.append(observation)
        observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            observation, _ = env.reset()
    env.close()
    return np.stack(seen)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _time(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per side and round (batch 64: a quarter)")
    parser.add_argument("--threads", type=int, default=1, help="torch's and onnxruntime's intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    print(
        f"{_cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, {args.threads} thread(s); load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13's deprecation of TorchScript (torch.jit.load)
        for name, (config, env_id) in POLICIES.items():
            _, model, _ = build(ROOT / config)
            model.eval()
            onnx_path = export_policy(model, Path(tmp) / "policy.onnx")
            script_path = export_policy(model, Path(tmp) / "policy.pt")
            session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            scripted = torch.jit.load(str(script_path))
            observations = _observations(env_id, 64)

            def torchscript(batch: np.ndarray, scripted: torch.jit.ScriptModule = scripted) -> np.ndarray:
                with torch.inference_mode():
                    return scripted(torch.from_numpy(batch)).numpy()

            for size in (1, 64):
                batch = observations[:size]
                sides: dict[str, Callable[[], object]] = {
                    "predict": lambda batch=batch, model=model: model.predict(batch),
                    "TorchScript": lambda batch=batch: torchscript(batch),
                    "onnxruntime": lambda batch=batch, s=session: s.run(["action"], {"observation": batch}),
                }
                calls = args.calls if size == 1 else max(args.calls // 4, 1)
                for call in sides.values():  # warm-up
                    _time(call, max(calls // 10, 1))
                times: dict[str, list[float]] = {side: [] for side in sides}
                for _ in range(args.rounds):
                    for side, call in sides.items():
                        times[side].append(_time(call, calls))
                medians = {side: statistics.median(t) * 1e6 for side, t in times.items()}
                rows.append((name, size, medians))
    print()
    print(
        "| policy | batch | predict (µs) | TorchScript (µs) | onnxruntime (µs) | predict / TorchScript "
        "| predict / onnxruntime |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, size, m in rows:
        print(
            f"| {name} | {size} | {m['predict']:.1f} | {m['TorchScript']:.1f} | {m['onnxruntime']:.1f} | "
            f"{m['predict'] / m['TorchScript']:.1f}x | {m['predict'] / m['onnxruntime']:.1f}x |"
        )
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

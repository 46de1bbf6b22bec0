#!/usr/bin/env bash
# Sets up (with every extra: loggers, mujoco, atari, envpool, video, plot, rich, onnx, dev) and runs lint, type checks and the whole test suite, learning tests included.
# Then, in the torchrl environment (tensordict 0.14, see scripts/setup_torchrl.sh), the torchrl interop tests and the
# core's tensordict-heavy tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
.venv/bin/ruff check rl_lightning tests examples benchmarks conftest.py
.venv/bin/ruff format --check rl_lightning tests examples benchmarks conftest.py
.venv/bin/mypy
# Two workers (pytest-xdist): the tests are independent (own tmp_path, own DDP port range per worker; see
# tests/conftest.py), and the slowest start first. Arguments go after, so `-n 0` runs them in one process.
.venv/bin/python -m pytest -n 2 --durations=20 "$@"
# The torchrl environment: torchrl 0.14.1 needs tensordict<0.15 (the core pins 0.15.3). Its interop tests (all tiers:
# CartPole solved by ClipPPOLoss, Pendulum by SACLoss, offline IQL beating its data; DDP of the adapters) and the
# core's tensordict-heavy tests on the 0.14 line: about a minute on 2 cores, once .venv-torchrl exists (its first
# set-up installs it, about a minute), plus mypy on the 0.14 line.
bash scripts/setup_torchrl.sh
.venv-torchrl/bin/mypy --cache-dir .mypy_cache/torchrl  # the interop against torchrl's own types; ~18 s cold, ~1 s warm
.venv-torchrl/bin/python -m pytest -n 2 --durations=10 -m "not slow" tests/test_torchrl*.py rl_lightning/interop \
    tests/test_offline.py tests/test_collector.py tests/test_rl_loop.py tests/test_replay.py \
    tests/test_functional.py tests/test_hooks.py tests/test_algorithms.py tests/test_off_policy.py

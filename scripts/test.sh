#!/usr/bin/env bash
# Sets up (with every extra: loggers, mujoco, atari, envpool, video, plot, rich, onnx, dev) and runs lint, type checks and the whole test suite, learning tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
.venv/bin/ruff check rl_lightning tests examples benchmarks
.venv/bin/ruff format --check rl_lightning tests examples benchmarks
.venv/bin/mypy
# Two workers (pytest-xdist): the tests are independent (own tmp_path, own DDP port range per worker; see
# tests/conftest.py), and the slowest start first. Arguments go after, so `-n 0` runs them in one process.
.venv/bin/python -m pytest -n 2 --durations=20 "$@"

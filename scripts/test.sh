#!/usr/bin/env bash
# Sets up (with every extra: loggers, mujoco, video, plot, rich, dev) and runs lint, type checks and the whole test suite, learning tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
.venv/bin/ruff check rl_lightning tests examples benchmarks
.venv/bin/ruff format --check rl_lightning tests examples benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"

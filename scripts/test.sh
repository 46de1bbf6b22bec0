#!/usr/bin/env bash
# Sets up (with the dev and mujoco extras) and runs lint, type checks and the whole test suite, learning tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,mujoco
.venv/bin/ruff check rl_lightning tests examples benchmarks
.venv/bin/ruff format --check rl_lightning tests examples benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"

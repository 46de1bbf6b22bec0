#!/usr/bin/env bash
# Creates .venv-torchrl: rl_lightning with the torchrl extra, pinned by constraints-torchrl.txt. torchrl 0.14.1 needs
# tensordict>=0.14.3,<0.15 while the core pins 0.15.3, so torchrl lives in an environment of its own; the core runs on
# both tensordict lines. Usage: bash scripts/setup_torchrl.sh (then .venv-torchrl/bin/python ...).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-torchrl/bin/python ] || python3 -m venv .venv-torchrl
.venv-torchrl/bin/python -m pip install --quiet --upgrade pip
.venv-torchrl/bin/python -m pip install --quiet -c constraints-torchrl.txt -e ".[dev,torchrl]"

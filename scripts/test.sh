#!/usr/bin/env bash
# Sets up (with the dev extra) and runs lint, type checks and the whole test suite, learning tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"

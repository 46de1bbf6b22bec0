#!/usr/bin/env bash
# Creates .venv and installs rl_lightning with the pinned versions of constraints.txt.
# Usage: bash scripts/setup.sh [extras], e.g. `bash scripts/setup.sh dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".${extras:+[$extras]}"

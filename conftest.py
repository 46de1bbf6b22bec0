"""Collection rules for the whole repository (tests/ and the doctests of rl_lightning/)."""

from __future__ import annotations

import importlib.util

# The torchrl adapters import torchrl, which lives in its own environment (scripts/setup_torchrl.sh: torchrl 0.14
# needs tensordict<0.15, the core pins 0.15); their doctests run there. tests/test_torchrl.py skips by itself.
collect_ignore_glob = [] if importlib.util.find_spec("torchrl") else ["rl_lightning/interop/torchrl_*.py"]

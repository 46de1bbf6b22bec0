"""Builds the optional C extension of the replay buffer's sum tree; everything else is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds, and ``rl_lightning.replay`` falls back
to its torch sum tree (same results, slower).
"""

import sys

from setuptools import Extension, setup

# The C loops must round like the torch ones: no fused multiply-adds (MSVC does not contract by default).
FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]

setup(
    ext_modules=[
        Extension(
            "rl_lightning._sumtree",
            sources=["rl_lightning/_sumtree.c"],
            extra_compile_args=FLAGS,
            optional=True,
        )
    ]
)

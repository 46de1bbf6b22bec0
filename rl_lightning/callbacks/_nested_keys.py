"""Nested TensorDict keys written the YAML-friendly way: ``"next.reward"`` or ``["next", "reward"]``."""

from __future__ import annotations

from collections.abc import Sequence

from tensordict import TensorDictBase

NestedKey = str | tuple[str, ...]
KeyLike = str | Sequence[str]
"""A key as a config gives it: a dotted string (``"next.reward"``) or a list/tuple of names."""


def parse_key(key: KeyLike) -> NestedKey:
    """``"next.reward"`` or ``["next", "reward"]`` → ``("next", "reward")``; ``"observation"`` stays a string."""
    parts = tuple(key.split(".")) if isinstance(key, str) else tuple(key)
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(
            f"key={key!r} is invalid: expected a key such as 'observation', a dotted nested key such as "
            "'next.reward', or a list of names such as ['next', 'reward']."
        )
    return parts[0] if len(parts) == 1 else parts


def dotted(key: NestedKey) -> str:
    """The dotted form of a key, for messages and metric names."""
    return key if isinstance(key, str) else ".".join(key)


def leaf_keys(batch: TensorDictBase) -> list[str]:
    """Every leaf key of ``batch`` in dotted form, sorted (for error messages)."""
    return sorted(dotted(k) for k in batch.keys(include_nested=True, leaves_only=True))

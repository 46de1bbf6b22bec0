"""Argument checks whose messages name the value, what was expected and how to fix it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_positive(name: str, value: Any, hint: str = "") -> None:
    """Raises ``ValueError`` unless ``value > 0``."""
    if not value > 0:
        raise ValueError(f"{name}={value!r} is invalid: expected a value > 0.{' ' + hint if hint else ''}")


def check_non_negative(name: str, value: Any, hint: str = "") -> None:
    """Raises ``ValueError`` unless ``value >= 0``."""
    if not value >= 0:
        raise ValueError(f"{name}={value!r} is invalid: expected a value >= 0.{' ' + hint if hint else ''}")


def check_range(name: str, value: float, low: float, high: float, hint: str = "") -> None:
    """Raises ``ValueError`` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ValueError(
            f"{name}={value!r} is invalid: expected a value in [{low}, {high}].{' ' + hint if hint else ''}"
        )


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        expected = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is invalid: expected {expected}.")


def hidden_sizes_or(sizes: Sequence[int] | None, default: list[int]) -> list[int]:
    """``sizes`` as a list (``default`` when ``None``); raises ``ValueError`` unless it holds positive sizes."""
    result = list(default if sizes is None else sizes)
    if not result or min(result) < 1:
        raise ValueError(f"hidden_sizes={result} is invalid: expected a non-empty list of positive sizes.")
    return result

"""Argument checks whose messages name the value, what was expected and how to fix it."""

from __future__ import annotations

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

"""Argument checks whose messages name the value, what was expected and how to fix it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NoReturn


def _fail(name: str, value: Any, expected: str, hint: str) -> NoReturn:
    raise ValueError(f"{name}={value!r} is invalid: expected {expected}.{' ' + hint if hint else ''}")


def _is_number(value: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _expected(value: Any, condition: str) -> str:
    """What a check expected, worded for what ``value`` got wrong (its type, or being infinite)."""
    if not _is_number(value):
        return f"a number {condition}, not a {type(value).__name__}"
    return f"a finite value {condition}" if math.isinf(value) else f"a value {condition}"


def check_positive(name: str, value: Any, hint: str = "") -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number ``> 0`` (NaN and inf are refused)."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        _fail(name, value, _expected(value, "> 0"), hint)


def check_non_negative(name: str, value: Any, hint: str = "") -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number ``>= 0`` (NaN and inf are refused)."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        _fail(name, value, _expected(value, ">= 0"), hint)


def check_finite(name: str, value: Any, hint: str = "") -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number (NaN and inf are refused)."""
    if not (_is_number(value) and math.isfinite(value)):
        _fail(name, value, "a finite number", hint)


def check_range(name: str, value: Any, low: float, high: float, hint: str = "", low_inclusive: bool = True) -> None:
    """Raises ``ValueError`` unless ``low <= value <= high`` (``low < value`` with ``low_inclusive=False``)."""
    above = _is_number(value) and (value >= low if low_inclusive else value > low)
    if not (above and value <= high):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}]"
        _fail(name, value, _expected(value, f"in {interval}"), hint)


def check_int(name: str, value: Any, minimum: int = 1, hint: str = "") -> None:
    """Raises ``ValueError`` unless ``value`` is an integer (Python or numpy, not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        _fail(name, value, f"an integer >= {minimum}", hint)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        expected = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is invalid: expected {expected}.")


def hidden_sizes_or(sizes: Sequence[int] | None, default: list[int]) -> list[int]:
    """``sizes`` as a list (``default`` when ``None``); raises ``ValueError`` unless it holds positive sizes. An empty
    list means no hidden layer: the heads read the encoder's features (a CNN's, for images) directly."""
    result = list(default if sizes is None else sizes)
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in result):
        raise ValueError(
            f"hidden_sizes={result} is invalid: expected a list of positive integer sizes, e.g. [64, 64] ([] for no "
            "hidden layer)."
        )
    return result


def require_packages(names: Sequence[str], purpose: str, extra: str, otherwise: str) -> None:
    """Raises ``ModuleNotFoundError`` naming the first of ``names`` that cannot be imported, what needs it
    (``purpose``), the extra that installs it and the way around it (``otherwise``)."""
    for name in names:
        try:
            __import__(name)
        except ImportError as err:
            raise ModuleNotFoundError(
                f"{purpose} needs {name!r}, which cannot be imported ({err}). Install the extra: {extra}, or "
                f"{otherwise}."
            ) from err

"""The one family of parameter checks: each raises :class:`~napari_cryoguard.CryoGuardError`
with the parameter's name, what it must be and what it got.

Used by every dataclass's ``__post_init__`` (attacks, defenses, models, the picker, the
simulator), so a bad value from a widget, the command line or Python reads the same.
This module imports neither torch nor Qt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from napari_cryoguard.errors import CryoGuardError

__all__ = ["check_choice", "check_float", "check_number", "check_positive_int", "check_prob",
           "check_widths"]


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise CryoGuardError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )


def check_number(
    name: str, value: Any, *, minimum: float = 0.0, strict: bool = False, integer: bool = False
) -> None:
    """``value`` is a finite number (an int with ``integer``) >= (or >) ``minimum``."""
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a finite number"
        raise CryoGuardError(f"{name} must be {kind}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise CryoGuardError(f"{name} must be {op} {minimum}, got {value!r}")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` is a whole number >= ``minimum`` (``3.0`` passes); returns it as ``int``."""
    try:
        v = int(value)
    except (TypeError, ValueError) as exc:
        raise CryoGuardError(f"{name} must be an integer, got {value!r}") from exc
    if isinstance(value, bool) or v != value or v < minimum:
        raise CryoGuardError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def check_float(name: str, value: Any, *, minimum: float | None = None,
                strict: bool = False) -> float:
    """``value`` converts to a finite float >= (or >) ``minimum``; returns it."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise CryoGuardError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise CryoGuardError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise CryoGuardError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return v


def check_widths(name: str, widths: Sequence[int], length: int | None = None) -> None:
    """``widths`` is a sequence of positive ints (of ``length`` when given)."""
    if isinstance(widths, int) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise CryoGuardError(f"{name} must be positive integers, got {widths!r}")
    if length is not None and len(widths) != length:
        raise CryoGuardError(f"{name} needs {length} values, got {len(widths)}")


def check_prob(name: str, value: float) -> None:
    """``0 <= value < 1`` (a dropout rate)."""
    if not 0.0 <= float(value) < 1.0:
        raise CryoGuardError(f"{name} must be in [0, 1), got {value!r}")

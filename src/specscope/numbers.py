"""How numbers are shown to people (tables, notebooks, the terminal, the report): one home, :func:`sig`.

At most :data:`MAX_DIGITS` significant digits (default 4); integers up to that many digits in full,
larger magnitudes with a k / M / G / T suffix (``2.458M``), very small ones as ``6e-5``; NaN and
None as ``–``; a unit after a space when given.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

MAX_DIGITS = 6
DEFAULT_DIGITS = 4
MISSING = "–"
_SUFFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _significant(x: float, digits: int) -> str:
    """``x`` with ``digits`` significant digits, no exponent for 1e-4 <= |x| < 1e3, a suffix from 1e3 on (integers
    of at most ``digits`` digits in full), trailing zeros dropped."""
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 1e3 and float(x).is_integer() and ax < 10 ** digits:
        return f"{int(x):d}"
    if ax >= 1e3:
        for scale, suffix in _SUFFIXES:
            if ax >= scale:
                return f"{x / scale:.{digits}g}{suffix}" if ax / scale < 1e3 else f"{x:.{digits}g}"
    if ax < 1e-4:
        mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        return f"{mantissa}e{int(exponent)}"
    return f"{x:.{digits}g}"


def sig(value: Any, digits: int = DEFAULT_DIGITS, unit: str | None = None) -> str:
    """``value`` as display text: a number (a Python, numpy or one-element torch number) with ``digits`` significant
    digits (clamped to 1..:data:`MAX_DIGITS`; see the module docstring), followed by `` unit`` when given; NaN and
    None as ``–``, infinities as ``∞`` / ``−∞``; a bool or any other value as ``str(value)``. Returns a str."""
    digits = max(1, min(int(digits), MAX_DIGITS))
    if value is None:
        return MISSING
    if hasattr(value, "item") and not isinstance(value, (bool, numbers.Real)):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return MISSING if value is not None and str(value) in ("<NA>", "NaT") else str(value)
    x = float(value)
    if math.isnan(x):
        return MISSING
    text = ("∞" if x > 0 else "−∞") if math.isinf(x) else _significant(x, digits)
    return f"{text} {unit}" if unit else text

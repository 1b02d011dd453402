"""How numbers are shown to people (tables, notebooks, the terminal, the report): one home.

:func:`sig` gives at most ``digits`` significant digits (default 4), integers below a million as they
are, larger magnitudes with an SI suffix (``1.235M``), NaN as ``nan`` and a unit when given.
"""
from __future__ import annotations

import math
from typing import Any

MAX_DIGITS = 6
_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"))


def sig(x: Any, digits: int = 4, unit: str = "") -> str:
    """``x`` as a short string: at most ``digits`` significant digits (1 to :data:`MAX_DIGITS`); an integer value
    below 1e6 in full; 1e6 and above with an SI suffix (``M``, ``G``, ``T``); ``nan`` / ``inf`` / ``-inf`` as such;
    anything that is not a number as ``str(x)``. ``unit`` is appended after a space."""
    digits = max(1, min(MAX_DIGITS, int(digits)))
    try:
        v = float(x.item() if hasattr(x, "item") else x)
    except (TypeError, ValueError):
        return str(x)
    if isinstance(x, bool):
        return str(x)
    if math.isnan(v):
        text = "nan"
    elif math.isinf(v):
        text = "inf" if v > 0 else "-inf"
    else:
        text = ""
        for scale, suffix in _SI:
            if abs(v) >= scale:
                text = f"{v / scale:.{digits}g}{suffix}"
                break
        if not text:
            text = str(int(v)) if v.is_integer() else f"{v:.{digits}g}"
    return f"{text} {unit}" if unit else text

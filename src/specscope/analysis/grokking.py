"""The grok step of a run (SPEC 5.5 grokking watch): the first evaluation from which test accuracy
reaches the threshold (default 0.95) and stays there for the rest of the run, so a single lucky
evaluation followed by a drop is not grokking.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

GROK_ACC = 0.95


def grok_step(steps: Sequence[float], test_acc: Sequence[float], threshold: float = GROK_ACC) -> int | None:
    """The first of ``steps`` from which every later finite ``test_acc`` (fractions in [0, 1]) is >= ``threshold``:
    an int step, or None when the last evaluation is below it (or there is none). Evaluations are taken in step
    order; NaN accuracies are skipped."""
    s = np.asarray(steps, dtype=float)
    a = np.asarray(test_acc, dtype=float)
    keep = np.isfinite(s) & np.isfinite(a)
    s, a = s[keep], a[keep]
    if len(s) == 0:
        return None
    order = np.argsort(s, kind="stable")
    s, a = s[order], a[order]
    below = np.flatnonzero(a < threshold)
    first = 0 if len(below) == 0 else int(below[-1]) + 1
    return int(s[first]) if first < len(s) else None

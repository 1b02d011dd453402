"""Learning-rate candidates per batch tier and synchronized successive halving (Spectral Lens App. B).

- :func:`lr_candidates`: for effective batch ``B`` against the reference ``(B0, lr0)``, the centers
  ``lr0 * B/B0`` (linear rule) and ``lr0 * sqrt(B/B0)`` (square-root rule), each times the
  multipliers ``{0.5, 1/sqrt2, 1, sqrt2, 2}``; duplicates (equal to 9 significant digits) removed.
- :func:`successive_halving`: every candidate trains to the first rung (in tokens); at each rung
  the top half by validation loss in each group (family x batch tier) is promoted, at least one
  survivor per group, and the survivors continue to the next rung. Promotion is on the observed
  loss at the rung only. The trainer is a callback, so the same logic drives local runs, Ray
  Tune trials, or (in tests) a synthetic objective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Sequence

import pandas as pd

MULTIPLIERS = (0.5, 2 ** -0.5, 1.0, 2 ** 0.5, 2.0)


def lr_candidates(batch: int, ref_batch: int, ref_lr: float, multipliers: Iterable[float] = MULTIPLIERS) -> list[float]:
    """Sorted, de-duplicated learning rates for batch ``batch`` from both scaling rules."""
    ratio = batch / ref_batch
    out: dict[str, float] = {}
    for center in (ref_lr * ratio, ref_lr * math.sqrt(ratio)):
        for m in multipliers:
            lr = center * m
            out.setdefault(f"{lr:.9g}", lr)
    return sorted(out.values())


@dataclass
class Candidate:
    name: str
    group: Hashable  # (family, batch tier): promotion is within a group
    params: dict = field(default_factory=dict)


def successive_halving(candidates: Sequence[Candidate], rungs: Sequence[float],
                       train_to: Callable[[Candidate, float], float], keep: float = 0.5) -> pd.DataFrame:
    """Run the halving; ``train_to(candidate, tokens)`` trains (or resumes) it to ``tokens`` and returns its
    validation loss there (NaN = failed: ranked last). Returns one row per (candidate, rung) it reached,
    with ``promoted`` for those that went on (at the last rung: the group's winner)."""
    if not rungs or any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise ValueError("rungs must be increasing token counts")
    alive = list(candidates)
    rows = []
    for r, tokens in enumerate(rungs):
        losses = {c.name: train_to(c, tokens) for c in alive}
        last = r == len(rungs) - 1
        promoted: set[str] = set()
        groups: dict[Hashable, list[Candidate]] = {}
        for c in alive:
            groups.setdefault(c.group, []).append(c)
        for members in groups.values():
            ranked = sorted(members, key=lambda c: (math.isnan(losses[c.name]), losses[c.name]))
            n_keep = 1 if last else max(1, int(len(ranked) * keep))  # top half (rounded down), at least one
            promoted.update(c.name for c in ranked[:n_keep])
        for c in alive:
            rows.append({"rung": r, "tokens": tokens, "name": c.name, "group": c.group, **c.params,
                         "val_loss": losses[c.name], "promoted": c.name in promoted})
        alive = [c for c in alive if c.name in promoted]
    return pd.DataFrame(rows)

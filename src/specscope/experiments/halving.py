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
    """Sorted, de-duplicated learning rates for batch ``batch`` (sequences per step) from both scaling rules around
    the reference ``(ref_batch, ref_lr)``: a list of floats, ascending (at most ``2 * len(multipliers)``)."""
    ratio = batch / ref_batch
    out: dict[str, float] = {}
    for center in (ref_lr * ratio, ref_lr * math.sqrt(ratio)):
        for m in multipliers:
            lr = center * m
            out.setdefault(f"{lr:.9g}", lr)
    return sorted(out.values())


@dataclass
class Candidate:
    """One trial of a halving: its unique ``name``, its ``group`` (promotion is within a group) and ``params`` (the
    trial's settings, e.g. ``batch`` and ``lr``, copied into the halving table)."""

    name: str
    group: Hashable  # (family, batch tier): promotion is within a group
    params: dict = field(default_factory=dict)


def one_at_a_time(train_to: Callable[[Candidate, float], float]) -> Callable[[list[Candidate], float], dict[str, float]]:
    """A rung callback from a per-candidate ``train_to(candidate, tokens) -> loss``: a function of
    ``(candidates, tokens)`` that trains them one after another and returns ``{name: loss}``."""
    return lambda cands, tokens: {c.name: train_to(c, tokens) for c in cands}


def successive_halving(candidates: Sequence[Candidate], rungs: Sequence[float],
                       train_rung: Callable[[list[Candidate], float], dict[str, float]], keep: float = 0.5,
                       on_rung: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Run the halving; ``train_rung(candidates, tokens)`` trains (or resumes) every candidate still alive to
    ``tokens``, all together (one synchronized rung: e.g. one Ray Tune run), and returns each one's
    validation loss there (NaN = failed: ranked last). Returns a DataFrame with one row per (candidate, rung)
    it reached: ``rung`` (index), ``tokens``, ``name``, ``group``, the candidate's ``params``, ``val_loss``
    and ``promoted`` (it went on; at the last rung: the group's winner); ``on_rung`` sees the table after
    each rung (to save it). Rungs that do not increase are a ValueError."""
    if not rungs or any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise ValueError("rungs must be increasing token counts")
    alive = list(candidates)
    rows = []
    for r, tokens in enumerate(rungs):
        got = train_rung(alive, tokens)
        losses = {c.name: float(got.get(c.name, float("nan"))) for c in alive}
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
        if on_rung is not None:
            on_rung(pd.DataFrame(rows))
    return pd.DataFrame(rows)

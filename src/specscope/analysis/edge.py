"""Trajectory gap dynamics (SPEC 5.5): phases of the gap-ratio series, lag to validation loss, gap events.

Phase rule (documented, configurable): smooth the gap-ratio series with a centered running
median of ``smooth`` points; ``peak`` = its maximum. The **plateau** is the maximal run of
consecutive measurements around the peak whose smoothed gap ratio is at least
``plateau_frac * peak``; measurements before it are the **rise**; after it, a measurement is
**collapse** once the smoothed gap ratio has fallen below ``collapse_frac * peak`` (and stays
collapse from there on), otherwise **decline**.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..store.reader import Run
from .coverage import join, training_scalars


@dataclass
class PhaseRule:
    """The thresholds of the phase rule: ``smooth`` is the running-median width (measurements),
    ``plateau_frac`` and ``collapse_frac`` are fractions of the peak smoothed gap ratio (dimensionless)."""

    smooth: int = 3
    plateau_frac: float = 0.8
    collapse_frac: float = 0.5


def running_median(x: np.ndarray, width: int) -> np.ndarray:
    """Centered running median of ``x`` over ``width`` points (edges padded with the end values, NaN skipped):
    a float array as long as ``x``; a copy of ``x`` when ``width <= 1`` or ``x`` has fewer than 3 points."""
    if width <= 1 or len(x) < 3:
        return x.copy()
    h = width // 2
    pad = np.pad(x, (h, h), mode="edge")
    return np.array([np.nanmedian(pad[i : i + width]) for i in range(len(x))])


def phases(gap: np.ndarray, rule: PhaseRule = PhaseRule()) -> np.ndarray:
    """A phase label per measurement of the gap-ratio series (rule in the module docstring): an object array as long
    as ``gap`` of ``rise``, ``plateau``, ``decline`` or ``collapse``; all ``""`` when no gap ratio is finite."""
    gap = np.asarray(gap, dtype=float)
    labels = np.full(len(gap), "", dtype=object)
    if len(gap) == 0 or not np.isfinite(gap).any():
        return labels
    s = running_median(gap, rule.smooth)
    peak_i = int(np.nanargmax(s))
    peak = s[peak_i]
    hi = s >= rule.plateau_frac * peak
    lo_i, hi_i = peak_i, peak_i
    while lo_i > 0 and hi[lo_i - 1]:
        lo_i -= 1
    while hi_i < len(s) - 1 and hi[hi_i + 1]:
        hi_i += 1
    labels[:lo_i] = "rise"
    labels[lo_i : hi_i + 1] = "plateau"
    collapsed = False
    for i in range(hi_i + 1, len(s)):
        collapsed = collapsed or s[i] < rule.collapse_frac * peak
        labels[i] = "collapse" if collapsed else "decline"
    return labels


def lagged_correlation(x: np.ndarray, y: np.ndarray, max_lag: int) -> pd.DataFrame:
    """Pearson correlation of ``x[t]`` with ``y[t + lag]`` for ``lag`` in ``[-max_lag, max_lag]`` (in samples): a
    DataFrame with columns ``lag`` (samples), ``corr`` (Pearson r; NaN with fewer than 3 finite pairs or a constant
    side) and ``n`` (pairs used), one row per lag, ascending."""
    rows = []
    n = len(x)
    for lag in range(-max_lag, max_lag + 1):
        a = x[max(0, -lag) : n - max(0, lag)]
        b = y[max(0, lag) : n - max(0, -lag)]
        ok = np.isfinite(a) & np.isfinite(b)
        r = float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() >= 3 and a[ok].std() > 0 and b[ok].std() > 0 else np.nan
        rows.append({"lag": lag, "corr": r, "n": int(ok.sum())})
    return pd.DataFrame(rows)


def gap_events(steps: np.ndarray, gap: np.ndarray, kstar: np.ndarray, open_at: float = 1.5, close_at: float = 1.2) -> pd.DataFrame:
    """Openings (gap ratio rises to ``open_at``), collapses (falls below ``close_at`` after an opening) and ``kstar``
    shifts, in step order: a DataFrame with columns ``step``, ``event`` (``opening``, ``collapse`` or
    ``kstar A -> B``), ``gap_ratio`` (dimensionless) and ``kstar`` (modes); NaN gap ratios are skipped."""
    rows = []
    is_open = False
    for i, (step, g) in enumerate(zip(steps, gap)):
        if not np.isfinite(g):
            continue
        if not is_open and g >= open_at:
            is_open = True
            rows.append({"step": int(step), "event": "opening", "gap_ratio": float(g), "kstar": kstar[i]})
        elif is_open and g < close_at:
            is_open = False
            rows.append({"step": int(step), "event": "collapse", "gap_ratio": float(g), "kstar": kstar[i]})
        if i > 0 and np.isfinite(kstar[i]) and np.isfinite(kstar[i - 1]) and kstar[i] != kstar[i - 1]:
            rows.append({"step": int(step), "event": f"kstar {int(kstar[i - 1])} -> {int(kstar[i])}", "gap_ratio": float(g),
                         "kstar": kstar[i]})
    return pd.DataFrame(rows, columns=["step", "event", "gap_ratio", "kstar"])


MIN_WINDOWS = 3  # fewest measured windows for phases to mean anything


def edge_analysis(run: Run, probe: str = "trajectory", name: str = "global", max_lag: int = 5,
                  rule: PhaseRule = PhaseRule()) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(table, events, verdict)`` of the trajectory window ``name`` of ``probe``.

    ``table``: one row per measured window, columns ``step``, ``gap_ratio``, ``kstar``, ``phase`` and, when a
    validation loss is logged, ``val_loss`` (interpolated to the window's step). ``events``: as :func:`gap_events`.
    ``verdict``: a dict with ``phases`` (count per phase), ``peak_gap_ratio``, ``peak_step``, ``windows``,
    ``best_lag`` (windows; positive = the gap ratio leads the loss) and ``best_corr`` (Pearson r) of
    :func:`lagged_correlation`, ``missing`` (what the run lacked: the trajectory probe, enough windows, a
    validation loss), ``applies`` and ``verdict`` (the sentence). Without any gap ratio: two empty frames and a
    verdict with only ``verdict``, ``missing`` and ``applies``. Never raises for want of data."""
    m = run.metrics(probe=probe)
    m = m[(m["name"] == name) & m["metric"].isin(["gap_ratio", "kstar"])]
    table = m.pivot_table(index="step", columns="metric", values="value")
    if table.empty or "gap_ratio" not in table or not table["gap_ratio"].notna().any():
        why = (f"no {probe} measurements in this run: trajectory gaps need the Trajectory probe" if m.empty else
               f"no {probe} window named {name!r} with >= 2 updates: no gap ratio")
        return pd.DataFrame(), pd.DataFrame(), {"verdict": why, "missing": [why], "applies": False}
    table = table.reindex(columns=["gap_ratio", "kstar"]).reset_index()
    table["phase"] = phases(table["gap_ratio"].to_numpy(), rule)
    sc = training_scalars(run)
    v = sc[["step", "val_loss"]].dropna() if "val_loss" in sc else pd.DataFrame()
    missing = []
    if len(v):
        table["val_loss"] = np.interp(table["step"], v["step"], v["val_loss"])
        corr = lagged_correlation(table["gap_ratio"].to_numpy(), table["val_loss"].to_numpy(), max_lag)
        best = corr.loc[corr["corr"].abs().idxmax()] if corr["corr"].notna().any() else None
        if best is None:
            missing.append(f"too few windows with a validation loss ({len(table)}) for the lag correlation")
    else:
        best = None
        missing.append("no validation loss logged: no lagged correlation of the gap ratio with it")
    n = int(table["gap_ratio"].notna().sum())
    few = n < MIN_WINDOWS
    if few:
        missing.insert(0, f"only {n} window{'s' if n != 1 else ''} with a gap ratio: phases need >= {MIN_WINDOWS}")
    events = gap_events(table["step"].to_numpy(), table["gap_ratio"].to_numpy(), table["kstar"].to_numpy())
    counts = table["phase"].value_counts().to_dict()
    counts.pop("", None)
    peak = table.loc[table["gap_ratio"].idxmax()]
    head = "collapse seen" if counts.get("collapse") else ("plateau reached" if counts.get("plateau") else "rising")
    head = f"{head} ({n} windows, peak gap ratio {peak['gap_ratio']:.3g} at step {int(peak['step'])})"
    verdict = {"phases": counts, "peak_gap_ratio": float(peak["gap_ratio"]), "peak_step": int(peak["step"]), "windows": n,
               "best_lag": None if best is None else int(best["lag"]), "best_corr": None if best is None else float(best["corr"]),
               "missing": missing, "applies": not few, "verdict": join(None if few else head, *missing)}
    return table, events, verdict

"""Compression waves across depth (SPEC 5.2, Lifecycle), per kind and pooled.

Rules (documented):

- ``compression`` = ``1 - stable_rank(t) / stable_rank(t0)`` per matrix (SPEC section 4); the parts
  of one layer (experts, recurrent gates) are averaged per layer. The analysis runs per kind (each
  block kind of the run, at least ``q`` and ``k``; every kind of a model without blocks, whose
  layers are its matrices' order in depth) and on the **pooled** compression (mean over those
  kinds per layer and step). A wave needs >= 3 layers.
- **Compression gradient** at a step: least-squares slope of compression against layer index
  (compression per layer). Its **reversal step**: the first step after the gradient's largest
  magnitude where its sign is the opposite one.
- **Half-compression step** ``t50(l)``: the first step at which layer ``l``'s compression reaches
  half of its final value (last measurement), linearly interpolated between the two measurements
  around the crossing; NaN when the final value is 0 or not finite.
- **Wave front**: the ordinary least-squares line ``t50(l) = a + b l`` over the layers with a
  finite ``t50`` (>= 3), ``b`` in steps per layer with its ``CI_LEVEL`` confidence interval
  (Student's t, ``n - 2`` degrees of freedom). **Velocity** = ``1 / b`` layers per step; its
  interval is ``[1 / b_hi, 1 / b_lo]`` when the interval of ``b`` excludes 0, else unbounded
  (reported NaN). **Direction**: ``early -> late`` when ``b``'s interval is above 0 (deeper layers
  reach half compression later), ``late -> early`` when below, ``not significant`` otherwise.
- ``front_layer`` at a step (the table): the layer the fitted front is at, ``(step - a) / b``,
  NaN outside the measured layers or without a direction.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from ..models import BLOCK_KINDS
from ..store.reader import Run
from .coverage import RunContents, contents, join
from .stats import CI_LEVEL, interval
from .timeseries import across_time

HIDDEN = tuple(BLOCK_KINDS)
MIN_LAYERS = 3  # a wave front needs at least this many layers
POOLED = "pooled"
_NAN = float("nan")


def compression_frame(run: Run) -> pd.DataFrame:
    """``compression`` (stable rank against the first measurement, dimensionless) of every hidden matrix (layer >= 0)
    of the weight probe: a long DataFrame with columns ``step``, ``layer``, ``kind``, ``compression`` (parts of one
    layer averaged); empty with those columns when the run has no weight spectra."""
    a = across_time(run)
    if a.empty:
        return pd.DataFrame(columns=["step", "layer", "kind", "compression"])
    a = a[(a["metric"] == "compression") & (a["layer"] >= 0)]
    return a.groupby(["step", "layer", "kind"], as_index=False)["value"].mean().rename(columns={"value": "compression"})


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` against ``x`` over the finite pairs (units of ``y`` per unit of ``x``); NaN with
    fewer than 2 pairs or a constant ``x``."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return _NAN
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def half_step(steps: np.ndarray, values: np.ndarray) -> float:
    """``t50``: the first step at which ``values`` (one layer's compression over ``steps``, ascending) reaches half
    of its final (last finite) value, linearly interpolated between the measurements around the crossing (in
    steps); NaN with fewer than 2 finite values or a final value of 0."""
    ok = np.isfinite(values)
    s, v = np.asarray(steps, float)[ok], np.asarray(values, float)[ok]
    if len(v) < 2 or v[-1] == 0:
        return _NAN
    r = v / v[-1]  # fraction of the final value (a negative final value: expansion, same rule)
    i = int(np.argmax(r >= 0.5))
    if i == 0:
        return float(s[0])
    return float(s[i - 1] + (0.5 - r[i - 1]) / (r[i] - r[i - 1]) * (s[i] - s[i - 1]))


def front_fit(layers: np.ndarray, t50: np.ndarray, level: float = CI_LEVEL) -> dict:
    """The wave front from the half-compression steps (rules in the module docstring): a dict with ``n_layers_t50``,
    ``front_slope`` (steps per layer) with ``front_slope_ci_lower`` / ``front_slope_ci_upper``, ``front_intercept``
    (step at layer 0), ``velocity`` (layers per step) with ``velocity_ci_lower`` / ``velocity_ci_upper`` (NaN when
    unbounded) and ``direction``; NaN numbers and direction ``"too few layers"`` with fewer than 3 finite ``t50``."""
    ok = np.isfinite(layers) & np.isfinite(t50)
    x, y = np.asarray(layers, float)[ok], np.asarray(t50, float)[ok]
    n = int(len(x))
    out = {"n_layers_t50": n, "front_slope": _NAN, "front_slope_ci_lower": _NAN, "front_slope_ci_upper": _NAN,
           "front_intercept": _NAN, "velocity": _NAN, "velocity_ci_lower": _NAN, "velocity_ci_upper": _NAN,
           "direction": "too few layers"}
    if n < MIN_LAYERS or np.ptp(x) == 0:
        return out
    xc = x - x.mean()
    b = float(xc @ (y - y.mean()) / (xc @ xc))
    a = float(y.mean() - b * x.mean())
    resid = y - (a + b * x)
    se = float(np.sqrt(resid @ resid / (n - 2) / (xc @ xc)))
    half = float(student_t.ppf(0.5 + level / 2, n - 2)) * se
    lo, hi = b - half, b + half
    sig = lo > 0 or hi < 0
    vel = interval(1.0 / b if b != 0 else _NAN, *(sorted((1.0 / lo, 1.0 / hi)) if sig else (_NAN, _NAN)), n=n)
    out.update(front_slope=b, front_slope_ci_lower=lo, front_slope_ci_upper=hi, front_intercept=a, velocity=vel.mean,
               velocity_ci_lower=vel.lo, velocity_ci_upper=vel.hi,
               direction="not significant" if not sig else "early -> late" if b > 0 else "late -> early")
    return out


def _grid(comp: pd.DataFrame) -> pd.DataFrame:
    """Compression as a (step x layer) grid, mean over the kinds of ``comp``."""
    return comp.pivot_table(index="step", columns="layer", values="compression", aggfunc="mean").sort_index()


def grid_wave(grid: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One wave from a (step x layer) compression grid: ``(table, verdict)``, the table with ``step``, ``gradient``
    (compression per layer) and ``front_layer`` (the fitted front's layer at that step), the verdict with
    :func:`front_fit`'s keys, ``layers`` and ``t50`` (steps, one per layer, NaN where undefined), ``gradient_peak``
    (compression per layer), ``gradient_peak_step``, ``reversal_step`` (None without a reversal) and ``verdict``
    (the sentence)."""
    if grid.empty:
        return pd.DataFrame(columns=["step", "gradient", "front_layer"]), {"verdict": "no compression measured across depth"}
    layers, steps, vals = grid.columns.to_numpy(float), grid.index.to_numpy(float), grid.to_numpy(float)
    grad = np.array([slope(layers, row) for row in vals])
    t50 = np.array([half_step(steps, vals[:, j]) for j in range(len(layers))])
    fit = front_fit(layers, t50)
    front = np.full(len(steps), np.nan)
    if fit["direction"] in ("early -> late", "late -> early"):
        front = (steps - fit["front_intercept"]) / fit["front_slope"]
        front[(front < layers.min()) | (front > layers.max())] = np.nan
    table = pd.DataFrame({"step": steps.astype(int), "gradient": grad, "front_layer": front})
    verdict = {**fit, "layers": layers.astype(int).tolist(), "t50": [round(float(t), 3) for t in t50]}
    if not np.isfinite(grad).any():
        return table, {**verdict, "verdict": "no compression measured across depth"}
    peak_i = int(np.nanargmax(np.abs(grad)))
    rev = np.nonzero(np.sign(grad[peak_i + 1:]) == -np.sign(grad[peak_i]))[0]
    reversal = int(steps[peak_i + 1 + rev[0]]) if len(rev) else None
    verdict.update(gradient_peak=float(grad[peak_i]), gradient_peak_step=int(steps[peak_i]), reversal_step=reversal)
    verdict["verdict"] = _sentence(verdict)
    return table, verdict


def _sentence(v: dict) -> str:
    d = v["direction"]
    if d in ("early -> late", "late -> early"):
        front = (f"compression wave {d}: {v['velocity']:.3g} layers/step ({CI_LEVEL:.0%} CI "
                 f"[{v['velocity_ci_lower']:.3g}, {v['velocity_ci_upper']:.3g}])")
    elif d == "not significant":
        front = (f"compression wave direction not significant (t50 slope {v['front_slope']:.3g} steps/layer, "
                 f"{CI_LEVEL:.0%} CI [{v['front_slope_ci_lower']:.3g}, {v['front_slope_ci_upper']:.3g}])")
    else:
        front = f"no wave front: only {v['n_layers_t50']} layers with a half-compression step (needs >= {MIN_LAYERS})"
    rev = v.get("reversal_step")
    return front + (f", gradient reverses at step {rev}" if rev is not None else ", no gradient reversal")


def wave_kinds(have: RunContents, kinds: Iterable[str] | None = None) -> list[str]:
    """The kinds a wave is measured for: ``kinds``, else the run's block kinds (in ``HIDDEN`` order), else every
    kind of a model without blocks; a list of kind names."""
    if kinds is not None:
        return list(kinds)
    return [k for k in HIDDEN if k in have.kinds] if have.has_blocks else list(have.kinds)


def compression_waves(run: Run, kinds: Iterable[str] | None = None,
                      have: RunContents | None = None) -> tuple[pd.DataFrame, dict]:
    """``(table, verdict)``: the pooled wave's table (:func:`grid_wave`) and a verdict with the pooled wave's keys,
    ``velocity_layers_per_step`` (= ``velocity``), ``by_kind`` (kind -> that kind's :func:`grid_wave` verdict, for
    each kind with >= 3 layers; the sentence names the kinds with fewer), ``kinds``, ``n_layers``, ``missing`` (what the run lacked), ``applies`` and
    ``verdict`` (the sentence: pooled, then per kind). Never raises for want of data."""
    have = have if have is not None else contents(run)
    empty = pd.DataFrame(columns=["step", "gradient", "front_layer"])
    why = have.weights(3, "a compression wave") or have.hidden("a compression wave")
    if why:
        return empty, {"verdict": why, "missing": [why], "applies": False, "by_kind": {}}
    kinds = wave_kinds(have, kinds)
    comp = compression_frame(run)
    comp = comp[comp["kind"].isin(kinds)]
    n_layers = int(comp.dropna(subset=["compression"])["layer"].nunique())
    notes = [have.depth_note(), have.parts_note(set(kinds))]
    why = have.layers_missing(MIN_LAYERS, "a compression wave across depth", n_layers)
    table, pooled = grid_wave(_grid(comp))
    if why:
        return table, {"verdict": join(why, *notes), "missing": [why], "applies": False, "n_layers": n_layers, "by_kind": {}}
    by_kind, shallow = {}, []
    for kind in kinds:
        c = comp[comp["kind"] == kind].dropna(subset=["compression"])
        if c["layer"].nunique() >= MIN_LAYERS:
            by_kind[kind] = grid_wave(_grid(c))[1]
        else:
            shallow.append(f"{kind}: only {c['layer'].nunique()} layers, no wave of its own")
    missing = [] if "direction" in pooled else [pooled["verdict"]]
    per_kind = "; ".join([f"{k}: {v['direction']}" + (f" {v['velocity']:.3g} layers/step" if v.get("direction", "").endswith(
        ("late", "early")) else "") for k, v in by_kind.items() if "direction" in v] + shallow)
    sentence = f"pooled over {', '.join(kinds)}: {pooled['verdict']}"
    return table, {**pooled, "velocity_layers_per_step": pooled.get("velocity", _NAN), "by_kind": by_kind,
                   "kinds": kinds, "n_layers": n_layers, "missing": missing, "applies": not missing,
                   "verdict": join(sentence, f"per kind: {per_kind}" if per_kind else None, *notes)}

"""The spectral lifecycle across depth (SPEC 5.2-5.3): compression waves, depth profiles of alpha,
the Q/K vs V/O asymmetry, and the depth scaling of the alpha range across runs.

Rules (documented):

- **Compression gradient** at a step: least-squares slope of ``compression`` (mean over the
  kinds in ``kinds``: the transformer block kinds, or every kind of a model without blocks,
  whose layers are its matrices' order in depth; several parts of one layer, e.g. experts or
  recurrent gates, are averaged per layer) against layer index; a wave needs >= 3 layers. Its
  **reversal step**: the first step after the gradient's largest magnitude where its sign is
  the opposite one.
- **Wave front** at a measurement: the layer with the largest compression rate
  (``d compression / d step`` between consecutive measurements). **Velocity**: least-squares
  slope of the front layer against step (layers per step), over the measurements up to the
  reversal step (all of them without a reversal); positive = the wave moves early -> late.
- **Depth profile**: final ``metric`` (default ``alpha_tail``) per layer and kind (the parts of
  one layer averaged: ``parts`` says how many); the peak layer;
  an ordinary least-squares quadratic ``a l^2 + b l + c`` over the layers, with the 95% confidence
  interval of the curvature ``a`` (and of the slope at the middle layer) from the OLS covariance
  and Student's t with ``n - 3`` degrees of freedom. A coefficient is **significant** when its
  interval excludes 0. The standard errors (fitted in depth scaled to [-1, 1]) have a floor at float
  resolution, 1e-9 of the profile's largest magnitude, so an exact fit of an analytically zero
  coefficient is not called significant by rounding. The **shape** label (``SHAPES``), checked in
  this order:

  - ``too few layers``: fewer than 4 finite layers (a quadratic has 3 parameters: no residual
    left to test it); curvature and interval are NaN;
  - ``inverted U``: the peak is interior (strictly above the first and the last layer) and the
    curvature is significantly negative (upper bound < 0); only this sets ``inverted_u``;
  - ``U``: the minimum is interior (strictly below both ends) and the curvature is significantly
    positive (lower bound > 0);
  - ``monotone``: neither, and the slope at the middle layer is significant (a trend over depth,
    possibly curved, with its extreme at an end);
  - ``no shape``: nothing significant (flat, noisy, or a zig-zag, whose curvature is zero).
- **Q/K-V/O asymmetry**: mean depth range (max - min over layers) of the final metric for q, k
  over that for v, o.
- **Depth scaling** across runs of depth ``L``: ``delta_alpha`` = depth range of the final
  metric (mean over kinds), fit ``log delta_alpha = beta log L + c``; report beta and R^2.
"""
from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from ..models import BLOCK_KINDS
from ..store.reader import Run
from .coverage import RunContents, contents, join, nan_reasons
from .timeseries import across_time

log = logging.getLogger(__name__)

HIDDEN = tuple(BLOCK_KINDS)
MIN_LAYERS = 3  # a wave front needs at least this many layers
SHAPES = ("inverted U", "U", "monotone", "no shape", "too few layers")
MIN_PROFILE_LAYERS = 4
CI_LEVEL = 0.95
_FLOAT_RESOLUTION = 1e-9  # relative: a coefficient this small against the profile's magnitude is rounding


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
        return float("nan")
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def wave_table(comp: pd.DataFrame, kinds: Iterable[str] = HIDDEN) -> pd.DataFrame:
    """One row per step of ``comp`` (from :func:`compression_frame`, restricted to ``kinds``): a DataFrame with
    columns ``step``, ``gradient`` (compression per layer, the slope across depth) and ``front_layer`` (the layer
    of fastest compression since the previous step; NaN at the first)."""
    c = comp[comp["kind"].isin(list(kinds))]
    grid = c.pivot_table(index="step", columns="layer", values="compression", aggfunc="mean").sort_index()
    if grid.empty:
        return pd.DataFrame(columns=["step", "gradient", "front_layer"])
    layers = grid.columns.to_numpy(float)
    steps = grid.index.to_numpy(float)
    vals = grid.to_numpy()
    grad = np.array([slope(layers, row) for row in vals])
    rate = np.full_like(vals, np.nan)
    rate[1:] = np.diff(vals, axis=0) / np.diff(steps)[:, None]
    front = np.array([layers[int(np.nanargmax(r))] if np.isfinite(r).any() else np.nan for r in rate])
    return pd.DataFrame({"step": steps.astype(int), "gradient": grad, "front_layer": front})


def compression_waves(run: Run, kinds: Iterable[str] | None = None,
                      have: RunContents | None = None) -> tuple[pd.DataFrame, dict]:
    """``(table, verdict)``: the :func:`wave_table` and a verdict dict with :func:`wave_verdict`'s keys,
    ``n_layers``, ``missing`` (what the run lacked), ``applies`` and ``verdict`` (the sentence).

    ``kinds`` None: the transformer block kinds, or every kind when the run has no blocks.
    """
    have = have if have is not None else contents(run)
    why = have.weights(3, "a compression wave") or have.hidden("a compression wave")
    if why:
        return pd.DataFrame(columns=["step", "gradient", "front_layer"]), {"verdict": why, "missing": [why], "applies": False}
    kinds = list(kinds) if kinds is not None else list(HIDDEN) if have.has_blocks else list(have.kinds)
    comp = compression_frame(run)
    comp = comp[comp["kind"].isin(kinds)]
    table = wave_table(comp, kinds)
    n_layers = int(comp.dropna(subset=["compression"])["layer"].nunique())
    notes = [have.depth_note(), have.parts_note(set(kinds))]
    why = have.layers_missing(MIN_LAYERS, "a compression wave across depth", n_layers)
    if why:
        return table, {"verdict": join(why, *notes), "missing": [why], "applies": False, "n_layers": n_layers}
    verdict = wave_verdict(table)
    missing = [] if "direction" in verdict else [verdict["verdict"]]
    return table, {**verdict, "n_layers": n_layers, "missing": missing, "applies": not missing,
                   "verdict": join(verdict["verdict"], *notes)}


def wave_verdict(table: pd.DataFrame) -> dict:
    """The verdict of one wave table: a dict with ``gradient_peak`` (compression per layer) and
    ``gradient_peak_step``, ``reversal_step`` (None without a reversal), ``velocity_layers_per_step``, ``direction``
    (``early -> late``, ``late -> early`` or ``static``) and ``verdict`` (the sentence); only ``verdict`` when no
    gradient is finite."""
    g = table["gradient"].to_numpy() if not table.empty else np.array([])
    if not np.isfinite(g).any():
        return {"verdict": "no compression measured across depth"}
    steps = table["step"].to_numpy()
    peak_i = int(np.nanargmax(np.abs(g)))
    sign = np.sign(g[peak_i])
    rev = np.nonzero(np.sign(g[peak_i + 1 :]) == -sign)[0]
    reversal = int(steps[peak_i + 1 + rev[0]]) if len(rev) else None
    upto = table if reversal is None else table[table["step"] <= reversal]
    vel = slope(upto["step"].to_numpy(float), upto["front_layer"].to_numpy(float))
    direction = "early -> late" if vel > 0 else "late -> early" if vel < 0 else "static"
    return {"gradient_peak": float(g[peak_i]), "gradient_peak_step": int(steps[peak_i]), "reversal_step": reversal,
            "velocity_layers_per_step": vel, "direction": direction,
            "verdict": f"compression wave {direction} ({vel:.3g} layers/step)"
                       + (f", gradient reverses at step {reversal}" if reversal is not None else ", no gradient reversal")}


def final_metric(run: Run, metric: str = "alpha_tail") -> pd.DataFrame:
    """Value of ``metric`` at the last weight-probe step per (layer, kind) of the hidden matrices: a DataFrame with
    columns ``layer``, ``kind``, ``<metric>`` (the mean over the matrices of a kind in one layer: experts, gates) and
    ``parts`` (how many); empty with those columns when nothing was measured."""
    m = run.metrics(probe="weights", metric=metric)
    m = m[m["layer"] >= 0]
    if m.empty:
        return pd.DataFrame(columns=["layer", "kind", metric, "parts"])
    m = m[m["step"] == m["step"].max()]
    g = m.groupby(["layer", "kind"], as_index=False)
    return g["value"].mean().rename(columns={"value": metric}).merge(
        g["name"].nunique().rename(columns={"name": "parts"}), on=["layer", "kind"])


def quadratic_fit(layers: np.ndarray, values: np.ndarray, level: float = CI_LEVEL) -> dict[str, float]:
    """OLS quadratic over depth: curvature ``a`` and the slope at the middle layer, each with its
    ``level`` confidence interval (OLS covariance, Student's t with ``n - 3`` degrees of freedom).

    Fitted in centered, scaled depth ``u = (l - mid) / h`` (u in [-1, 1]) for conditioning; the
    coefficients are converted back to layer units. Needs ``n >= 4`` distinct layers.

    Returns a dict of floats: ``curvature`` (metric per layer squared), ``curvature_ci_lower``,
    ``curvature_ci_upper``, ``slope`` (metric per layer, at the middle layer), ``slope_ci_lower``,
    ``slope_ci_upper``."""
    mid, h = (layers.max() + layers.min()) / 2, np.ptp(layers) / 2
    u = (layers - mid) / h
    x = np.column_stack([u**2, u, np.ones_like(u)])
    coef, *_ = np.linalg.lstsq(x, values, rcond=None)
    dof = len(values) - 3
    resid = values - x @ coef
    cov = float(resid @ resid) / dof * np.linalg.inv(x.T @ x)
    floor = _FLOAT_RESOLUTION * max(float(np.abs(values).max()), np.finfo(float).tiny)
    se = np.maximum(np.sqrt(np.diag(cov))[:2], floor)
    half = float(student_t.ppf(0.5 + level / 2, dof)) * se
    scale = np.array([h**2, h])  # d^2y/du^2 = h^2 d^2y/dl^2, dy/du = h dy/dl
    lo, hi = (coef[:2] - half) / scale, (coef[:2] + half) / scale
    return {"curvature": float(coef[0] / h**2), "curvature_ci_lower": float(lo[0]), "curvature_ci_upper": float(hi[0]),
            "slope": float(coef[1] / h), "slope_ci_lower": float(lo[1]), "slope_ci_upper": float(hi[1])}


def profile_shape(values: np.ndarray, fit: dict[str, float]) -> str:
    """The shape label of one profile (values in layer order) from its ``quadratic_fit`` (rules in the
    module docstring): ``"inverted U"``, ``"U"``, ``"monotone"`` or ``"no shape"``."""
    interior = slice(1, len(values) - 1)
    peak_inside = bool(values[interior].max() > max(values[0], values[-1]))
    trough_inside = bool(values[interior].min() < min(values[0], values[-1]))
    if peak_inside and fit["curvature_ci_upper"] < 0:
        return "inverted U"
    if trough_inside and fit["curvature_ci_lower"] > 0:
        return "U"
    if fit["slope_ci_lower"] > 0 or fit["slope_ci_upper"] < 0:
        return "monotone"
    return "no shape"


def profile_verdict(layers: np.ndarray, values: np.ndarray) -> dict:
    """Peak layer, depth range, quadratic curvature with its CI, shape label and inverted-U test of one
    depth profile (finite values only; fewer than ``MIN_PROFILE_LAYERS`` layers: shape ``too few layers``, NaN
    curvature): a dict with ``peak_layer`` (None when empty), ``range`` (metric units), ``n_layers``, ``curvature``,
    ``curvature_ci_lower``, ``curvature_ci_upper``, ``shape`` (one of ``SHAPES``) and ``inverted_u`` (bool)."""
    ok = np.isfinite(values)
    layers, values = layers[ok], values[ok]
    out = {"peak_layer": int(layers[np.argmax(values)]) if len(values) else None,
           "range": float(np.ptp(values)) if len(values) else float("nan"), "n_layers": int(len(values))}
    if len(values) < MIN_PROFILE_LAYERS:
        nan = float("nan")
        return {**out, "curvature": nan, "curvature_ci_lower": nan, "curvature_ci_upper": nan,
                "shape": "too few layers", "inverted_u": False}
    fit = quadratic_fit(layers, values)
    shape = profile_shape(values, fit)
    return {**out, "curvature": fit["curvature"], "curvature_ci_lower": fit["curvature_ci_lower"],
            "curvature_ci_upper": fit["curvature_ci_upper"], "shape": shape, "inverted_u": shape == "inverted U"}


def _asymmetry(rng: pd.Series) -> float:
    """Mean depth range of q, k over that of v, o (NaN without both pairs)."""
    qk = rng.reindex(["q", "k"]).dropna()
    vo = rng.reindex(["v", "o"]).dropna()
    return float(qk.mean() / vo.mean()) if len(qk) and len(vo) and vo.mean() > 0 else float("nan")


def depth_profiles(run: Run, metric: str = "alpha_tail", have: RunContents | None = None) -> tuple[pd.DataFrame, dict]:
    """``(table, verdict)``. ``table``: one row per kind with ``kind``, ``layers``, ``values`` (final ``metric`` per
    layer, parts of one layer averaged), ``parts`` and :func:`profile_verdict`'s keys. ``verdict``: the same test on
    the profile averaged over kinds (``peak_layer``, ``shape``, ``inverted_u``, ``curvature`` with its CI,
    ``delta_alpha`` = its depth range), plus ``metric``, ``status``, ``qk_vo_asymmetry`` (ratio; NaN without q, k
    and v, o), ``n_layers``, ``n_layers_finite``, ``inverted_u_kinds``, ``missing`` (what the run lacked),
    ``applies`` and ``verdict`` (the sentence). Never raises for want of data."""
    have = have if have is not None else contents(run)
    why = have.weights(1, f"a depth profile of {metric}") or have.hidden(f"a depth profile of {metric}")
    fm = final_metric(run, metric) if not why else pd.DataFrame()
    if fm.empty:
        why = why or f"no {metric} of hidden matrices (layer >= 0) in this run"
        return pd.DataFrame(), {"metric": metric, "verdict": why, "missing": [why], "applies": False}
    rows = []
    for kind, g in fm.groupby("kind", sort=True):
        g = g.sort_values("layer")
        rows.append({"kind": kind, "layers": g["layer"].astype(int).tolist(), "values": g[metric].round(4).tolist(),
                     "parts": int(g["parts"].max()),
                     **profile_verdict(g["layer"].to_numpy(float), g[metric].to_numpy(float))})
    table = pd.DataFrame(rows)
    asym = _asymmetry(table.set_index("kind")["range"])
    mean_profile = fm.groupby("layer")[metric].mean()
    n_finite = int(mean_profile.notna().sum())
    overall = profile_verdict(mean_profile.index.to_numpy(float), mean_profile.to_numpy(float))
    nan_why = nan_reasons(run.metrics(probe="weights", metric=metric).query("layer >= 0"), metric)
    detail = f" with a finite {metric} (of {len(mean_profile)})" if n_finite < len(mean_profile) else ""
    missing = [w for w in [have.layers_missing(MIN_PROFILE_LAYERS, f"a depth profile of {metric}", n_finite, detail)] if w]
    kinds = set(fm["kind"])
    if not (kinds & {"q", "k"} and kinds & {"v", "o"}):
        missing.append("no q, k and v, o matrices: no Q/K-V/O asymmetry")
    elif not np.isfinite(asym) and n_finite >= MIN_PROFILE_LAYERS:
        missing.append(f"no depth range of {metric} for q, k or v, o: no Q/K-V/O asymmetry")
    notes = [have.depth_note(), have.parts_note(kinds), f"{metric} is NaN at {nan_why}" if nan_why else None]
    few = overall["shape"] == "too few layers"
    shape = None if few else (
        f"{metric} depth profile: {overall['shape']} (curvature {overall['curvature']:.3g}, {CI_LEVEL:.0%} CI "
        f"[{overall['curvature_ci_lower']:.3g}, {overall['curvature_ci_upper']:.3g}]), peak at layer {overall['peak_layer']}")
    ratio = f"Q/K carry {asym:.2g}x the depth range of V/O" if np.isfinite(asym) else None
    verdict = {"metric": metric, "status": "too few layers" if few else "ok", "qk_vo_asymmetry": asym,
               "peak_layer": overall["peak_layer"], "shape": overall["shape"], "inverted_u": overall["inverted_u"],
               "curvature": overall["curvature"], "curvature_ci_lower": overall["curvature_ci_lower"],
               "curvature_ci_upper": overall["curvature_ci_upper"], "delta_alpha": overall["range"],
               "n_layers": int(len(mean_profile)), "n_layers_finite": n_finite,
               "inverted_u_kinds": table.loc[table["inverted_u"], "kind"].tolist(),
               "missing": missing, "applies": not few, "verdict": join(shape, ratio, *missing, *notes)}
    return table, verdict


def depth_scaling(runs: Iterable[Run], metric: str = "alpha_tail") -> tuple[pd.DataFrame, dict]:
    """``delta_alpha ~ L^beta`` across runs of different depth: ``(table, verdict)``, the table with columns ``run``,
    ``n_layers``, ``delta_alpha`` (depth range of the final ``metric``), the verdict with ``beta`` (exponent),
    ``r2`` (NaN with only two runs) and ``verdict``; ``beta`` and ``r2`` None without runs of two depths."""
    rows = []
    for run in runs:
        _, v = depth_profiles(run, metric)
        if "delta_alpha" in v:
            rows.append({"run": run.run_id, "n_layers": v["n_layers"], "delta_alpha": v["delta_alpha"]})
    table = pd.DataFrame(rows)
    ok = table[(table["delta_alpha"] > 0) & (table["n_layers"] > 1)] if not table.empty else table
    if len(ok) < 2 or ok["n_layers"].nunique() < 2:
        return table, {"verdict": "needs runs of at least two depths", "beta": None, "r2": None}
    x, y = np.log(ok["n_layers"].to_numpy(float)), np.log(ok["delta_alpha"].to_numpy(float))
    beta, c = np.polyfit(x, y, 1)
    resid = y - (beta * x + c)
    r2 = 1 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()) if len(ok) > 2 else float("nan")
    return table, {"beta": float(beta), "r2": r2, "verdict": f"delta_alpha ~ L^{beta:.2f}" + (f" (R^2 = {r2:.2f})" if np.isfinite(r2) else "")}

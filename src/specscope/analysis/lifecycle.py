"""The spectral lifecycle across depth (SPEC 5.3): depth profiles of three alpha variants, the Q/K vs V/O
asymmetry, and the depth scaling of the alpha range across runs. Compression waves (SPEC 5.2) live in
:mod:`specscope.analysis.waves` (re-exported here).

Rules (documented):

- **Alpha variants** (``ALPHA_VARIANTS``): ``alpha_sv``, the rank-decay exponent of the singular
  values ``s_j ~ j^-alpha`` (:func:`sv_decay_alpha`: weighted least squares of ``ln s_j`` on
  ``ln j`` over every positive ``s_j``, weights ``1/j`` so that each factor of ten in rank weighs
  the same and the many tail ranks do not swamp the head; computed here from the stored final
  spectra), and the probe's ``alpha_weighted`` and ``alpha_mle`` (WeightWatcher's ESD tail
  exponent, a density exponent: ``1 + 1/a`` for ``lam_j ~ j^-a``). The paper's "Weighted Alpha"
  (values 0.1-0.55) is checked against each variant's values (``PAPER_ALPHA_RANGE``).
- **Depth profile**: final ``metric`` per layer and kind (the parts of one layer averaged: ``parts``
  says how many); the peak layer; an ordinary least-squares quadratic ``a l^2 + b l + c`` over the
  layers, with the 95% confidence interval of the curvature ``a`` (and of the slope at the middle
  layer) from the OLS covariance and Student's t with ``n - 3`` degrees of freedom. A coefficient is
  **significant** when its interval excludes 0. The standard errors (fitted in depth scaled to
  [-1, 1]) have a floor at float resolution, 1e-9 of the profile's largest magnitude, so an exact fit
  of an analytically zero coefficient is not called significant by rounding. The **shape** label
  (``SHAPES``), checked in this order:

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

from ..store.reader import Run
from .coverage import RunContents, contents, join, nan_reasons
from .waves import HIDDEN, MIN_LAYERS, compression_frame, compression_waves, slope  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

SHAPES = ("inverted U", "U", "monotone", "no shape", "too few layers")
MIN_PROFILE_LAYERS = 4
CI_LEVEL = 0.95
_FLOAT_RESOLUTION = 1e-9  # relative: a coefficient this small against the profile's magnitude is rounding
SV_ALPHA = "alpha_sv"
ALPHA_VARIANTS = (SV_ALPHA, "alpha_weighted", "alpha_mle")
PAPER_ALPHA_RANGE = (0.1, 0.55)  # the Lifecycle paper's "Weighted Alpha" axis (Fig. 9, 10, 19, 21)


def sv_decay_alpha(sv: np.ndarray) -> float:
    """Rank-decay exponent of singular values ``s_j ~ j^-alpha`` (dimensionless): ``-slope`` of the weighted
    least-squares line of ``ln s_j`` on ``ln j`` over the positive, finite ``s_j`` (``j`` = 1-based rank in
    descending order), weights ``1/j``; NaN with fewer than 3 such values."""
    s = np.sort(np.asarray(sv, dtype=float).ravel())[::-1]
    j = np.arange(1, len(s) + 1, dtype=float)
    ok = np.isfinite(s) & (s > 0)
    if ok.sum() < 3:
        return float("nan")
    x, y, w = np.log(j[ok]), np.log(s[ok]), 1.0 / j[ok]
    xm, ym = (w @ x) / w.sum(), (w @ y) / w.sum()
    return float(-(w * (x - xm)) @ (y - ym) / ((w * (x - xm)) @ (x - xm)))


def final_sv_alpha(run: Run) -> pd.DataFrame:
    """:data:`SV_ALPHA` of every hidden matrix's stored spectrum at the last weight-probe step: columns ``layer``,
    ``kind``, ``name``, ``value``; empty without stored spectra."""
    spec = run.spectra(probe="weights")
    spec = spec[spec["layer"] >= 0] if not spec.empty else spec
    if spec.empty:
        return pd.DataFrame(columns=["layer", "kind", "name", "value"])
    spec = spec[spec["step"] == spec["step"].max()]
    vals = [sv_decay_alpha(np.sqrt(np.clip(v, 0, None)) if q == "eig" else v) for v, q in zip(spec["values"], spec["quantity"])]
    return spec[["layer", "kind", "name"]].assign(value=vals)


def final_metric(run: Run, metric: str = "alpha_tail") -> pd.DataFrame:
    """Value of ``metric`` at the last weight-probe step per (layer, kind) of the hidden matrices: a DataFrame with
    columns ``layer``, ``kind``, ``<metric>`` (the mean over the matrices of a kind in one layer: experts, gates) and
    ``parts`` (how many); empty with those columns when nothing was measured. :data:`SV_ALPHA` is computed from the
    stored final spectra (:func:`sv_decay_alpha`) when the probe did not store it."""
    m = run.metrics(probe="weights", metric=metric)
    m = m[m["layer"] >= 0]
    if m.empty and metric == SV_ALPHA:
        m = final_sv_alpha(run)
    if m.empty:
        return pd.DataFrame(columns=["layer", "kind", metric, "parts"])
    if "step" in m:
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


def variant_summary(table: pd.DataFrame, verdict: dict, kind: str = "q") -> dict:
    """A compact summary of one :func:`depth_profiles` result: ``metric``, ``shape`` / ``inverted_u`` /
    ``peak_layer`` / ``curvature`` with its CI (the profile of ``kind`` when the run has it, else the mean over
    kinds; ``profile_of`` says which), ``median``, ``min``, ``max`` (over every layer and kind, metric units),
    ``in_paper_range`` (the median inside :data:`PAPER_ALPHA_RANGE`), ``qk_vo_asymmetry``, ``delta_alpha`` and
    ``verdict`` (the depth profile's sentence)."""
    keys = ("shape", "inverted_u", "peak_layer", "curvature", "curvature_ci_lower", "curvature_ci_upper")
    out = {"metric": verdict.get("metric"), "verdict": verdict.get("verdict", ""),
           "qk_vo_asymmetry": verdict.get("qk_vo_asymmetry", float("nan")), "delta_alpha": verdict.get("delta_alpha", float("nan"))}
    if table.empty:
        return {**out, "profile_of": None, "median": float("nan"), "min": float("nan"), "max": float("nan"),
                "in_paper_range": False, **{k: verdict.get(k) for k in keys}}
    vals = np.array([x for v in table["values"] for x in v], dtype=float)
    vals = vals[np.isfinite(vals)]
    row = table.set_index("kind").loc[kind] if kind in set(table["kind"]) else None
    src = row.to_dict() if row is not None else verdict
    med = float(np.median(vals)) if len(vals) else float("nan")
    return {**out, "profile_of": kind if row is not None else "mean over kinds", "median": med,
            "min": float(vals.min()) if len(vals) else float("nan"), "max": float(vals.max()) if len(vals) else float("nan"),
            "in_paper_range": bool(PAPER_ALPHA_RANGE[0] <= med <= PAPER_ALPHA_RANGE[1]),
            **{k: (src[k] if k in src else None) for k in keys}}


def profile_variants(run: Run, have: RunContents | None = None, kind: str = "q") -> dict[str, dict]:
    """:func:`variant_summary` of the depth profile of each of :data:`ALPHA_VARIANTS`: a dict metric -> summary
    (a variant the run lacks has shape ``None`` or ``too few layers`` and its sentence says why)."""
    have = have if have is not None else contents(run)
    return {m: variant_summary(*depth_profiles(run, m, have=have), kind=kind) for m in ALPHA_VARIANTS}


def paper_range_sentence(variants: dict[str, dict]) -> str:
    """Which alpha variants' median final value lies in the paper's "Weighted Alpha" range: one sentence."""
    lo, hi = PAPER_ALPHA_RANGE
    inside = [m for m, v in variants.items() if v["in_paper_range"]]
    vals = ", ".join(f"{m} median {v['median']:.3g}" for m, v in variants.items() if np.isfinite(v["median"]))
    return (f"paper's Weighted Alpha range {lo}-{hi}: " + (f"matched by {', '.join(inside)}" if inside else "matched by none")
            + (f" ({vals})" if vals else ""))


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

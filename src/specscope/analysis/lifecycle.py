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
  one layer averaged: ``parts`` says how many); the peak layer; **inverted-U** when the peak is
  interior (not the first or last layer) and a quadratic fit of the profile has negative
  curvature. The shape needs >= 3 layers with a finite value.
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

from ..models import BLOCK_KINDS
from ..store.reader import Run
from .coverage import RunContents, contents, join, nan_reasons
from .timeseries import across_time

log = logging.getLogger(__name__)

HIDDEN = tuple(BLOCK_KINDS)
MIN_LAYERS = 3  # a wave front or a depth shape needs at least this many layers


def compression_frame(run: Run) -> pd.DataFrame:
    """Long frame (step, layer, kind, compression) of every block matrix."""
    a = across_time(run)
    if a.empty:
        return pd.DataFrame(columns=["step", "layer", "kind", "compression"])
    a = a[(a["metric"] == "compression") & (a["layer"] >= 0)]
    return a.groupby(["step", "layer", "kind"], as_index=False)["value"].mean().rename(columns={"value": "compression"})


def slope(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return float("nan")
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def wave_table(comp: pd.DataFrame, kinds: Iterable[str] = HIDDEN) -> pd.DataFrame:
    """Per step: compression gradient across depth and the wave-front layer."""
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
    """Wave table and verdict: gradient peak, reversal step, front velocity and direction.

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
    """Final value of ``metric`` per (layer, kind) of the weight probe: the mean over the matrices of a kind in
    one layer (experts, gates), ``parts`` of them."""
    m = run.metrics(probe="weights", metric=metric)
    m = m[m["layer"] >= 0]
    if m.empty:
        return pd.DataFrame(columns=["layer", "kind", metric, "parts"])
    m = m[m["step"] == m["step"].max()]
    g = m.groupby(["layer", "kind"], as_index=False)
    return g["value"].mean().rename(columns={"value": metric}).merge(
        g["name"].nunique().rename(columns={"name": "parts"}), on=["layer", "kind"])


def profile_verdict(layers: np.ndarray, values: np.ndarray) -> dict:
    """Peak layer and the inverted-U test of one depth profile."""
    ok = np.isfinite(values)
    layers, values = layers[ok], values[ok]
    if len(values) < 3:
        return {"peak_layer": int(layers[np.argmax(values)]) if len(values) else None, "curvature": float("nan"),
                "inverted_u": False, "range": float(np.ptp(values)) if len(values) else float("nan")}
    peak = int(np.argmax(values))
    curv = float(np.polyfit(layers, values, 2)[0])
    return {"peak_layer": int(layers[peak]), "curvature": curv, "inverted_u": bool(0 < peak < len(values) - 1 and curv < 0),
            "range": float(np.ptp(values))}


def _asymmetry(rng: pd.Series) -> float:
    """Mean depth range of q, k over that of v, o (NaN without both pairs)."""
    qk = rng.reindex(["q", "k"]).dropna()
    vo = rng.reindex(["v", "o"]).dropna()
    return float(qk.mean() / vo.mean()) if len(qk) and len(vo) and vo.mean() > 0 else float("nan")


def depth_profiles(run: Run, metric: str = "alpha_tail", have: RunContents | None = None) -> tuple[pd.DataFrame, dict]:
    """Per kind: final metric by layer, peak layer, inverted-U, range, parts averaged per layer; verdict with
    the Q/K-V/O asymmetry, and what the run lacked (``missing``)."""
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
    missing = [w for w in [have.layers_missing(MIN_LAYERS, f"a depth profile of {metric}", n_finite, detail)] if w]
    kinds = set(fm["kind"])
    if not (kinds & {"q", "k"} and kinds & {"v", "o"}):
        missing.append("no q, k and v, o matrices: no Q/K-V/O asymmetry")
    elif not np.isfinite(asym) and n_finite >= MIN_LAYERS:
        missing.append(f"no depth range of {metric} for q, k or v, o: no Q/K-V/O asymmetry")
    notes = [have.depth_note(), have.parts_note(kinds),
             f"{metric} is NaN at {nan_why}" if nan_why else None]
    shape = (f"{metric} depth profile {'is' if overall['inverted_u'] else 'is not'} an inverted U "
             f"(peak at layer {overall['peak_layer']})") if n_finite >= MIN_LAYERS else None
    ratio = f"Q/K carry {asym:.2g}x the depth range of V/O" if np.isfinite(asym) else None
    verdict = {"metric": metric, "qk_vo_asymmetry": asym, "peak_layer": overall["peak_layer"],
               "inverted_u": overall["inverted_u"], "delta_alpha": overall["range"], "n_layers": int(len(mean_profile)),
               "n_layers_finite": n_finite, "inverted_u_kinds": table.loc[table["inverted_u"], "kind"].tolist(),
               "missing": missing, "applies": shape is not None, "verdict": join(shape, ratio, *missing, *notes)}
    return table, verdict


def depth_scaling(runs: Iterable[Run], metric: str = "alpha_tail") -> tuple[pd.DataFrame, dict]:
    """``delta_alpha ~ L^beta`` across runs of different depth: beta and R^2 of the log-log fit."""
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

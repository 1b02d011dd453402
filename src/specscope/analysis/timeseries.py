"""Across-time metrics of a run's stored spectra (SPEC section 4)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..spectra import series_metrics
from ..store.reader import Run
from .coverage import training_scalars

KEYS = ["probe", "layer", "kind", "part", "name"]


def moving_average(y: np.ndarray, width: int) -> np.ndarray:
    """Centered moving average of ``y`` over ``width`` points, edges padded with the end values: a float array as
    long as ``y`` (``y`` itself when ``width <= 1`` or it has fewer than 3 points)."""
    y = np.asarray(y, dtype=float)
    if width <= 1 or len(y) < 3:
        return y
    pad = np.pad(y, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(pad, np.ones(width) / width, mode="valid")


def moving_median(y: np.ndarray, width: int) -> np.ndarray:
    """Centered moving median of ``y`` over ``width`` points (NaN ignored), edges padded by reflection: a float
    array as long as ``y`` (``y`` itself when ``width <= 1`` or it has fewer than ``width`` points). Inside, a
    monotone run keeps its values, so a clean decay is not shifted; a spike narrower than half the window is
    removed, at the ends too."""
    y = np.asarray(y, dtype=float)
    if width <= 1 or len(y) < width:
        return y
    pad = np.pad(y, (width // 2, width - 1 - width // 2), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(pad, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window gives NaN
        return np.nanmedian(windows, axis=1)


def lr_series(run: Run) -> tuple[pd.Series | None, str | None]:
    """``(series, column)``: the logged learning rate applied to the hidden matrices by step (the scalar
    ``lr_hidden``, else ``lr``; in the optimizer's units), and which column it was; ``(None, None)`` when the run
    logged neither. The reference trainer logs at step ``t`` the rate of the update that produced ``W_t``."""
    sc = training_scalars(run)
    for col in ("lr_hidden", "lr"):
        if col in sc:
            v = pd.to_numeric(sc[col], errors="coerce")
            s = pd.Series(v.to_numpy(float), index=sc["step"].to_numpy()).dropna()
            if len(s):
                return s.sort_index(), col
    return None, None


def lr_at(lr: pd.Series, steps: np.ndarray) -> np.ndarray:
    """The learning rate in force at each of ``steps``: the value logged at that step, else the last one logged
    before it (the first one logged for steps before any); a float array in the optimizer's units."""
    idx = lr.index.to_numpy(float)
    i = np.searchsorted(idx, np.asarray(steps, dtype=float), side="right") - 1
    return lr.to_numpy(float)[np.clip(i, 0, len(idx) - 1)]


def across_time(run: Run, probe: str = "weights") -> pd.DataFrame:
    """The SPEC section 4 across-time metrics of every spectrum series of ``probe``: a long DataFrame with columns
    ``step``, ``tokens``, ``probe``, ``layer``, ``kind``, ``part``, ``name``, ``metric``, ``value``, where ``metric``
    is ``sd_variation``, ``sd_variation_per_step`` (per step), ``cos_sd_final`` (cosine, in [-1, 1]),
    ``compression``, ``nuclear_norm`` (``sum_j s_j``) or, for singular-value spectra of a run that logged its
    learning rate (:func:`lr_series`), ``sd_variation_lr`` (unitless, SPEC 5.1). Each part of a layer (one expert, one gate) is its own series; a series whose spectrum length
    changes over time is skipped. No spectra: an empty frame with those columns."""
    spec = run.spectra(probe=probe)
    rows: list[pd.DataFrame] = []
    if spec.empty:
        return pd.DataFrame(columns=["step", "tokens", *KEYS, "metric", "value"])
    lr, _ = lr_series(run)
    for key, g in spec.groupby(KEYS, sort=False):
        g = g.sort_values("step")
        lengths = {len(v) for v in g["values"]}
        if len(lengths) != 1:
            continue
        is_sv = "quantity" not in g or (g["quantity"] == "sv").all()
        rates = lr_at(lr, g["step"].to_numpy()) if lr is not None and is_sv else None
        metrics = series_metrics(np.stack(g["values"].to_numpy()), g["step"].to_numpy(), rates)
        base = g[["step", "tokens"]].reset_index(drop=True)
        for metric, vals in metrics.items():
            df = base.copy()
            for k, v in zip(KEYS, key):
                df[k] = v
            df["metric"] = metric
            df["value"] = vals
            rows.append(df)
    return pd.concat(rows, ignore_index=True)

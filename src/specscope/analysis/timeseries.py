"""Across-time metrics of a run's stored spectra (SPEC section 4)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..spectra import series_metrics
from ..store.reader import Run

KEYS = ["probe", "layer", "kind", "part", "name"]


def moving_average(y: np.ndarray, width: int) -> np.ndarray:
    """Centered moving average of ``y`` over ``width`` points, edges padded with the end values: a float array as
    long as ``y`` (``y`` itself when ``width <= 1`` or it has fewer than 3 points)."""
    y = np.asarray(y, dtype=float)
    if width <= 1 or len(y) < 3:
        return y
    pad = np.pad(y, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(pad, np.ones(width) / width, mode="valid")


def across_time(run: Run, probe: str = "weights") -> pd.DataFrame:
    """The SPEC section 4 across-time metrics of every spectrum series of ``probe``: a long DataFrame with columns
    ``step``, ``tokens``, ``probe``, ``layer``, ``kind``, ``part``, ``name``, ``metric``, ``value``, where ``metric``
    is ``sd_variation``, ``sd_variation_per_step`` (per step), ``cos_sd_final`` (cosine, in [-1, 1]) or
    ``compression``. Each part of a layer (one expert, one gate) is its own series; a series whose spectrum length
    changes over time is skipped. No spectra: an empty frame with those columns."""
    spec = run.spectra(probe=probe)
    rows: list[pd.DataFrame] = []
    if spec.empty:
        return pd.DataFrame(columns=["step", "tokens", *KEYS, "metric", "value"])
    for key, g in spec.groupby(KEYS, sort=False):
        g = g.sort_values("step")
        lengths = {len(v) for v in g["values"]}
        if len(lengths) != 1:
            continue
        metrics = series_metrics(np.stack(g["values"].to_numpy()), g["step"].to_numpy())
        base = g[["step", "tokens"]].reset_index(drop=True)
        for metric, vals in metrics.items():
            df = base.copy()
            for k, v in zip(KEYS, key):
                df[k] = v
            df["metric"] = metric
            df["value"] = vals
            rows.append(df)
    return pd.concat(rows, ignore_index=True)

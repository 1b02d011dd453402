"""Across-time metrics of a run's stored spectra (SPEC section 4)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..spectra import series_metrics
from ..store.reader import Run

KEYS = ["probe", "layer", "kind", "name"]


def across_time(run: Run, probe: str = "weights") -> pd.DataFrame:
    """Long frame (step, tokens, probe, layer, kind, name, metric, value) of ``sd_variation``,
    ``sd_variation_per_step``, ``cos_sd_final`` and ``compression`` for each measured matrix."""
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

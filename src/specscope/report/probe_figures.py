"""Any probe's metrics, built-in or custom: each metric over steps (a line per layer and kind), the latest values
per matrix, and the main weight metrics of several runs overlaid."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .figures import _grid, _kinds

MAX_METRICS = 12  # panels of one probe's figure; the latest-values table holds every metric
MAX_LINES = 10  # lines of one panel; the rest are said in the legend's title
OVERLAY_METRICS = ("stable_rank", "alpha_tail", "spectral_norm")


def _where(layer: int, kind: str, part: int, name: str) -> str:
    """``L3 · q``, ``L3.2 · mlp_in`` (part 2), or the matrix name outside the blocks (layer < 0)."""
    if layer < 0:
        return name or kind
    return f"L{layer}{'' if part < 0 else f'.{part}'} · {kind}"


def probe_metrics(metrics: pd.DataFrame, probe: str) -> pd.DataFrame:
    """The rows of ``probe`` with a finite value: a DataFrame (may be empty)."""
    df = metrics[metrics["probe"] == probe]
    return df[np.isfinite(df["value"].to_numpy(dtype=float))]


def probe_figure(metrics: pd.DataFrame, probe: str) -> Figure | None:
    """Each metric of ``probe`` over steps, one panel per metric (at most :data:`MAX_METRICS`), one line per (layer,
    kind, part) (at most :data:`MAX_LINES`). A Figure; None when the probe has no finite value."""
    df = probe_metrics(metrics, probe)
    if df.empty:
        return None
    names = sorted(df["metric"].unique())[:MAX_METRICS]
    fig, axes = _grid(len(names), width=4.2, height=3.0, ncols=3)
    for ax, metric in zip(axes, names):
        groups = list(df[df["metric"] == metric].groupby(["layer", "kind", "part", "name"], sort=True))
        for i, ((layer, kind, part, name), g) in enumerate(groups[:MAX_LINES]):
            g = g.sort_values("step")
            ax.plot(g["step"], g["value"], "o-" if len(g) < 30 else "-", ms=3, lw=1.1, color=f"C{i % 10}",
                    label=_where(layer, kind, part, name))
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2, title=None if len(groups) <= MAX_LINES else f"first {MAX_LINES} of {len(groups)}",
                  title_fontsize=6)
    return fig


def latest_values(metrics: pd.DataFrame, probe: str) -> pd.DataFrame:
    """``probe``'s values at its last measured step: one row per matrix (``layer``, ``kind``, ``part``, ``name``), one
    column per metric (float, NaN where not measured) and ``status`` (the reasons of its NaN values, ``ok`` when
    none). A DataFrame, empty when the probe has no rows."""
    df = metrics[metrics["probe"] == probe]
    if df.empty:
        return pd.DataFrame()
    last = df[df["step"] == df["step"].max()]
    keys = ["layer", "kind", "part", "name"]
    wide = last.groupby(keys + ["metric"])["value"].last().unstack("metric")  # all-NaN metrics kept as NaN
    wide.columns.name = None
    bad = last[last["status"] != "ok"].groupby(keys)["status"].agg(lambda s: "; ".join(sorted(set(s))))
    wide["status"] = bad.reindex(wide.index).fillna("ok")
    return wide.reset_index().sort_values(["layer", "kind", "part"], kind="stable").reset_index(drop=True)


def overlay_metrics(frames: Mapping[str, pd.DataFrame], names: tuple[str, ...] = OVERLAY_METRICS,
                    probe: str = "weights") -> Figure | None:
    """The weight metrics ``names`` of several runs over steps (``frames``: run name → metrics frame), one panel per
    (metric, kind) with a line per run: the mean over the kind's hidden matrices (layer >= 0) at each step. A
    Figure; None when no run has a finite one."""
    finite = {run: probe_metrics(m, probe) for run, m in frames.items()}
    finite = {run: m[(m["layer"] >= 0) & m["metric"].isin(names)] for run, m in finite.items()}
    pooled = pd.concat(list(finite.values())) if finite else pd.DataFrame()
    if pooled.empty:
        return None
    kinds = _kinds(pooled)
    cells = [(metric, kind) for metric in names for kind in kinds
             if ((pooled["metric"] == metric) & (pooled["kind"] == kind)).any()]
    fig, axes = _grid(len(cells), width=3.8, height=2.8, ncols=4)
    for ax, (metric, kind) in zip(axes, cells):
        for r, (run, m) in enumerate(finite.items()):
            g = m[(m["metric"] == metric) & (m["kind"] == kind)].groupby("step")["value"].mean()
            if len(g):
                ax.plot(g.index, g.to_numpy(), "o-" if len(g) < 30 else "-", ms=3, color=f"C{r % 10}", label=run)
        ax.set_title(f"{metric} · {kind}", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return fig

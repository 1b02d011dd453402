"""Figures of the trajectory probe (SPEC 5.5) and of toy-task runs: gap-ratio timeline with phases,
window singular values over time, stability, and the grokking watch."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.grokking import grok_step
from .figures import _grid

PHASE_COLORS = {"rise": "#cfe8ff", "plateau": "#d8f5d0", "decline": "#fff1c9", "collapse": "#f9d0d0"}


def _track_label(name: str, layer: int, kind: str) -> str:
    return "global (all block matrices)" if name == "global" else f"{kind} · block {layer}"


def gap_timeline(table: pd.DataFrame, events: pd.DataFrame) -> Figure | None:
    """Gap ratio of the global trajectory over steps, phases shaded, ``kstar`` below, validation loss on a twin axis,
    from :func:`~specscope.analysis.edge_analysis`'s table and events. A Figure; None without a gap ratio."""
    if table.empty or table["gap_ratio"].notna().sum() == 0:
        return None
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax, axk = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    steps = table["step"].to_numpy(dtype=float)
    edges = np.concatenate([[steps[0]], (steps[1:] + steps[:-1]) / 2, [steps[-1]]])
    seen = set()
    for i, ph in enumerate(table["phase"]):
        if ph in PHASE_COLORS:
            ax.axvspan(edges[i], edges[i + 1], color=PHASE_COLORS[ph], lw=0, label=None if ph in seen else ph)
            seen.add(ph)
    ax.plot(steps, table["gap_ratio"], "o-", ms=3, color="C0", label="gap ratio σ_k*/σ_k*+1")
    for _, e in events.iterrows() if not events.empty else []:
        if e["event"] in ("opening", "collapse"):
            ax.axvline(e["step"], color="C3" if e["event"] == "collapse" else "C2", lw=0.8, ls=":")
    ax.set_ylabel("gap ratio")
    if "val_loss" in table and table["val_loss"].notna().any():
        t = ax.twinx()
        t.plot(steps, table["val_loss"], color="C3", lw=1.2)
        t.set_ylabel("validation loss", color="C3")
    ax.legend(fontsize=7, loc="upper left", ncol=5)
    ax.set_title("Trajectory gap ratio with phases (rise / plateau / decline / collapse)")
    axk.step(steps, table["kstar"], where="mid", color="C1")
    axk.set_ylabel("k*")
    axk.set_xlabel("step")
    return fig


def window_spectra(spectra: pd.DataFrame, top: int = 6) -> Figure | None:
    """The ``top`` singular values of each trajectory window over time, one panel per track. A Figure; None without
    trajectory spectra."""
    df = spectra[spectra["probe"].str.startswith("trajectory")]
    if df.empty:
        return None
    tracks = list(df.groupby(["probe", "name", "layer", "kind"], sort=True))
    fig, axes = _grid(len(tracks), width=4.6, height=3.0, ncols=3)
    for ax, ((probe, name, layer, kind), g) in zip(axes, tracks):
        g = g.sort_values("step")
        n = min(top, max(len(v) for v in g["values"]))
        sv = np.array([np.pad(np.asarray(v, float)[:n], (0, n - min(n, len(v))), constant_values=np.nan) for v in g["values"]])
        for j in range(n):
            ax.semilogy(g["step"], np.where(sv[:, j] > 0, sv[:, j], np.nan), color=f"C{j}", lw=1.1, label=f"σ{j + 1}")
        ax.set_title(_track_label(name, layer, kind) + ("" if probe == "trajectory" else f" · {probe}"), fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=3)
    return fig


def stability(metrics: pd.DataFrame) -> Figure | None:
    """``stability[j]`` (overlap of the top directions of the two half-windows, in [0, 1]) over time, per track. A
    Figure; None without stability values."""
    df = metrics[metrics["probe"].str.startswith("trajectory") & metrics["metric"].str.startswith("stability[")]
    df = df.dropna(subset=["value"])
    if df.empty:
        return None
    tracks = list(df.groupby(["probe", "name", "layer", "kind"], sort=True))
    fig, axes = _grid(len(tracks), width=4.6, height=3.0, ncols=3)
    for ax, ((probe, name, layer, kind), g) in zip(axes, tracks):
        for j, (metric, h) in enumerate(sorted(g.groupby("metric"))):
            h = h.sort_values("step")
            ax.plot(h["step"], h["value"], "o-", ms=2.5, lw=1, color=f"C{j}", label=metric)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(_track_label(name, layer, kind) + ("" if probe == "trajectory" else f" · {probe}"), fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    return fig


def grokking(scalars: pd.DataFrame, metrics: pd.DataFrame, threshold: float = 0.95) -> Figure | None:
    """Train / test accuracy, ``gap12`` of ``W_Q`` and its trajectory gap ratio, and the Fourier concentrations, with
    the grok step (the first evaluation from which test accuracy stays >= ``threshold``, a fraction) marked. A Figure; None when the run logged
    no ``test_acc``."""
    if "test_acc" not in scalars or scalars["test_acc"].notna().sum() == 0:
        return None
    sc = scalars.dropna(subset=["test_acc"]).sort_values("step")
    grok = grok_step(sc["step"], sc["test_acc"], threshold)
    fig, axes = _grid(3, width=4.6, height=3.0, ncols=3)
    axes[0].plot(sc["step"], sc["train_acc"], color="C0", label="train")
    axes[0].plot(sc["step"], sc["test_acc"], color="C3", label="test")
    axes[0].axhline(threshold, color="0.6", lw=0.8)
    axes[0].set_title("accuracy" + (f" · grok step {grok}" if grok is not None else " · no grok"))
    q = metrics[(metrics["layer"] == 0) & (metrics["kind"] == "q")]
    for probe, metric, color, label in (("weights", "gap12", "C0", "weight gap12"), ("trajectory", "gap_ratio", "C1",
                                                                                   "trajectory gap ratio")):
        g = q[(q["probe"] == probe) & (q["metric"] == metric)].sort_values("step")
        axes[1].plot(g["step"], g["value"], color=color, label=label)
    axes[1].set_title("W_Q of block 0")
    for col, color in (("h_s", "C2"), ("h_peak", "C4")):
        if col in sc:
            axes[2].plot(sc["step"], sc[col], color=color, label=col)
    axes[2].set_title("Fourier concentration of the final hidden state")
    for ax in axes:
        ax.set_xlabel("step")
        if grok is not None:
            ax.axvline(grok, color="k", lw=0.7, ls=":")
        if ax.lines:
            ax.legend(fontsize=7)
    return fig

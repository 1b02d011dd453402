"""Figures of a run (matplotlib, no pyplot state): each function returns a Figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.timeseries import moving_average
from ..models import KINDS
from ..spectra import rank_fit, tail_window

KIND_ORDER = list(KINDS)


def _kinds(df: pd.DataFrame) -> list[str]:
    """The kinds present in ``df``: the catalog's order first, then any other kind by name."""
    present = set(df["kind"].unique())
    return [k for k in KIND_ORDER if k in present] + sorted(present.difference(KIND_ORDER))


def _grid(n: int, width: float = 3.6, height: float = 2.8, ncols: int = 4) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def smooth(y: np.ndarray, frac: float = 0.02) -> np.ndarray:
    """Centered moving average of ``y`` over ``frac`` of its length (at least 1 point): a float array as long as
    ``y``."""
    return moving_average(y, max(1, int(len(y) * frac)))


def heatmaps(metrics: pd.DataFrame, metric: str, cmap: str = "viridis") -> Figure | None:
    """One heatmap per kind of hidden matrix (layer >= 0): layer (rows) x step (columns), the parts of one layer
    (experts, gates) averaged; kinds whose values are all NaN are left out. A Figure; None when every kind's are."""
    df = metrics[(metrics["metric"] == metric) & (metrics["layer"] >= 0)].dropna(subset=["value"])
    if df.empty:
        return None
    kinds = _kinds(df)
    fig, axes = _grid(len(kinds))
    for ax, kind in zip(axes, kinds):
        piv = df[df["kind"] == kind].pivot_table(index="layer", columns="step", values="value", aggfunc="mean")
        steps = piv.columns.to_numpy()
        im = ax.imshow(piv.to_numpy(), aspect="auto", origin="lower", interpolation="nearest", cmap=cmap,
                       extent=(steps.min() - 0.5, steps.max() + 0.5, piv.index.min() - 0.5, piv.index.max() + 0.5))
        fig.colorbar(im, ax=ax, shrink=0.9)
        ax.set_title(f"{metric} · {kind}")
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
        ax.set_yticks(piv.index.to_numpy())
    return fig


def _plot_distribution(ax, lam: np.ndarray, color: str, label: str, scale: int | None = None) -> None:
    """``p_j = lam_j / sum lam`` on log-log axes, with the tail-window power-law fit dashed."""
    if not np.isfinite(lam).all() or lam.sum() <= 0:
        return
    p = lam / lam.sum()
    j = np.arange(1, len(p) + 1)
    ok = p > 0
    ax.loglog(j[ok], p[ok], color=color, lw=1.1, label=label)
    win = tail_window(len(p), scale)
    if win is not None:
        alpha, c, _ = rank_fit(p[None, :], win)
        if np.isfinite(alpha[0]):
            jj = np.arange(win[0], win[1] + 1)
            ax.loglog(jj, np.exp(c[0]) * jj ** (-alpha[0]), "--", color=color, lw=1.7)


def final_spectra(spectra: pd.DataFrame, scale: int | None = None) -> Figure | None:
    """Final eigen distributions p_j (log-log), one panel per kind, with the tail power-law fit dashed (``scale``:
    model width, for the tail window). A Figure; None without spectra."""
    if spectra.empty:
        return None
    last = spectra[spectra["step"] == spectra["step"].max()]
    kinds = _kinds(last)
    fig, axes = _grid(len(kinds))
    for ax, kind in zip(axes, kinds):
        sub = last[last["kind"] == kind].sort_values("layer")
        cmap = [f"C{i % 10}" for i in range(len(sub))]
        for color, (_, row) in zip(cmap, sub.iterrows()):
            part = f".{row['part']}" if row.get("part", -1) >= 0 else ""  # L3.2: expert / gate 2 of layer 3
            lbl = f"L{row['layer']}{part}" if row["layer"] >= 0 else row["name"]
            _plot_distribution(ax, row["values"] ** 2, color, lbl, scale)
        ax.set_title(f"{kind} · step {int(last['step'].iloc[0])}")
        ax.set_xlabel("rank j")
        ax.set_ylabel("p_j = λ_j / Σλ")
        ax.legend(fontsize=6, ncol=2)
    return fig


def sd_variation(across: pd.DataFrame) -> Figure | None:
    """SoSD: singular-distribution variation between consecutive measurements, per kind, from
    :func:`~specscope.analysis.across_time`'s frame. A Figure; None without ``sd_variation`` values."""
    df = across[(across["metric"] == "sd_variation")].dropna(subset=["value"])
    if df.empty:
        return None
    kinds = _kinds(df)
    fig, axes = _grid(len(kinds))
    for ax, kind in zip(axes, kinds):
        for i, ((layer, name), g) in enumerate(df[df["kind"] == kind].groupby(["layer", "name"])):
            g = g.sort_values("step")
            lbl = f"L{layer}" if layer >= 0 else name
            ax.semilogy(g["step"], g["value"].clip(lower=1e-12), color=f"C{i % 10}", lw=1.0, label=lbl)
        ax.set_title(f"SD variation · {kind}")
        ax.set_xlabel("step")
        ax.set_ylabel("‖sd_t − sd_t'‖₂")
        ax.legend(fontsize=6, ncol=2)
    return fig


def _chosen_steps(steps: np.ndarray, k: int = 4) -> list[int]:
    steps = np.unique(steps)
    if len(steps) <= k:
        return steps.tolist()
    return sorted({int(steps[i]) for i in np.linspace(0, len(steps) - 1, k).round().astype(int)})


def lens_spectra(spectra: pd.DataFrame) -> Figure | None:
    """Activation and per-sample gradient spectra at chosen steps, with the tail power-law fit dashed. A Figure; None
    without activation or gradient spectra."""
    df = spectra[spectra["probe"].isin(["activations", "gradients"])]
    if df.empty:
        return None
    panels = list(df.groupby(["probe", "layer", "kind"], sort=True))
    fig, axes = _grid(len(panels), width=4.4, height=3.2, ncols=2)
    for ax, ((probe, layer, kind), g) in zip(axes, panels):
        steps = _chosen_steps(g["step"].to_numpy())
        cmap = ["#440154", "#31688e", "#35b779", "#fde725"]
        for color, step in zip(cmap[-len(steps):] if len(steps) < 4 else cmap, steps):
            row = g[g["step"] == step].iloc[0]
            lam = row["values"] if row["quantity"] == "eig" else row["values"] ** 2
            _plot_distribution(ax, lam, color, f"step {step}")
        what = "activation covariance" if probe == "activations" else f"per-sample gradients of {kind}"
        ax.set_title(f"{what} · block {layer}")
        ax.set_xlabel("rank j")
        ax.set_ylabel("p_j = λ_j / Σλ")
        ax.legend(fontsize=7)
    return fig


def lens_trajectories(metrics: pd.DataFrame) -> Figure | None:
    """``rankme`` and ``alpha_tail`` of the activation and gradient spectra over training. A Figure; None without
    them."""
    df = metrics[metrics["probe"].isin(["activations", "gradients"]) & metrics["metric"].isin(["rankme", "alpha_tail"])]
    if df.empty:
        return None
    fig, axes = _grid(2, width=4.4, height=3.0, ncols=2)
    for ax, metric in zip(axes, ["rankme", "alpha_tail"]):
        for i, ((probe, layer, kind), g) in enumerate(df[df["metric"] == metric].groupby(["probe", "layer", "kind"])):
            g = g.sort_values("step")
            ax.plot(g["step"], g["value"], "o-", ms=3, color=f"C{i}", label=f"{probe} · block {layer}" + ("" if probe == "activations" else f" · {kind}"))
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return fig

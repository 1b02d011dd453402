"""Figures of the Spectral Lens analyses (SPEC 5.6-5.7): runs of one family across batch sizes
(validation loss, activation spectra at matched loss, early ``alpha_tail``, rho vs the early
budget) and a chain of interventions (the same at matched loss plus the gradient spectra and the
token-gain / throughput-gain scatter, Fig. 3a style)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..analysis.lens import align, effective_batch
from ..store.reader import Run
from .figures import _plot_distribution

LABEL_COLORS = {"activation-led": "C0", "gradient-led": "C1", "throughput-leaning": "C2", "mixed / trade-off": "C3",
                "no measurable gain": "0.3", "unscored": "0.6"}


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def matched_spectra(ax, runs: Sequence[Run], labels: Sequence[str], target: float, probe: str) -> None:
    """The last ``probe`` spectrum (deepest layer) of each run at or before it first reaches ``target``
    (dashed: the power law over the tail window), drawn on ``ax``. Returns None."""
    steps = align(runs, loss=target)["step"].tolist()
    for i, (run, lbl, step) in enumerate(zip(runs, labels, steps)):
        spec = run.spectra(probe=probe)
        if spec.empty or step is None or pd.isna(step):
            continue
        spec = spec[(spec["layer"] == spec["layer"].max()) & (spec["step"] <= step)].sort_values("step")
        if len(spec):
            row = spec.iloc[-1]
            v = np.asarray(row["values"], dtype=float)
            _plot_distribution(ax, v if row["quantity"] == "eig" else v ** 2, f"C{i}", lbl)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"{probe} spectra at matched loss {target:.3f}")
    ax.set_xlabel("rank j")
    ax.set_ylabel("p_j")


def _loss_axes(ax, runs: Sequence[Run], labels: Sequence[str], target: float) -> None:
    for i, (run, lbl) in enumerate(zip(runs, labels)):
        sc = run.scalars()
        if "val_loss" in sc:
            sc = sc.dropna(subset=["val_loss"])
            ax.plot(sc["tokens"], sc["val_loss"], color=f"C{i}", label=lbl)
    ax.axhline(target, color="0.5", lw=0.8, ls="--")
    ax.set_title(f"validation loss; dashed: target {target:.3f}")
    ax.set_xlabel("tokens")


def lens_figure(runs: Sequence[Run], curve: pd.DataFrame, target: float) -> Figure:
    """One family across batch sizes: loss, matched-loss activation spectra (Fig. 1a), alpha_tail over tokens, rho vs
    budget for every bank window and the chosen one (Fig. 8; ``curve`` from
    :func:`~specscope.analysis.lens.rho_vs_budget`). A Figure."""
    runs = sorted(runs, key=lambda r: effective_batch(r) or 0)
    labels = [f"B={effective_batch(r)}" for r in runs]
    fig = Figure(figsize=(15, 3.8), layout="constrained")
    ax_loss, ax_spec, ax_alpha, ax_rho = fig.subplots(1, 4)
    _loss_axes(ax_loss, runs, labels, target)
    matched_spectra(ax_spec, runs, labels, target, "activations")
    for i, (run, lbl) in enumerate(zip(runs, labels)):
        m = run.metrics(probe="activations", metric="alpha_tail")
        if not m.empty:
            m = m[m["layer"] == m["layer"].max()].sort_values("tokens")
            ax_alpha.plot(m["tokens"], m["value"], color=f"C{i}", label=lbl)
    ax_alpha.set_title("alpha_tail of the deepest activations")
    ax_alpha.set_xlabel("tokens")
    wins = [c for c in curve.columns if c.startswith("rho[")]
    for c in wins:  # one curve per bank window (Fig. 8)
        ax_rho.plot(curve["budget_frac"], curve[c].astype(float), ".-", lw=1, label=f"ranks {c[4:-1]}")
    if "rho" in curve and len(curve):
        ax_rho.plot(curve["budget_frac"], curve["rho"].astype(float), "o", mfc="none", color="k", label="chosen window")
    ax_rho.axhline(0, color="0.7", lw=0.8)
    ax_rho.set_title("rho(early tail exponent, eps_tok) vs budget")
    ax_rho.set_xlabel("early budget / median T")
    for ax in (ax_loss, ax_spec, ax_alpha, ax_rho):
        _legend(ax)
    return fig


def taxonomy_axes(ax, table: pd.DataFrame, per_seed: pd.DataFrame | None = None) -> None:
    """Token gain vs throughput gain of each transition of a taxonomy table, colored by its label (Spectral Lens
    Fig. 3a style), drawn on ``ax``: for a seed-averaged table (columns ``tok_gain_sd`` / ``thr_gain_sd``) the mean
    with +-1 sd bars over seeds, and each seed's point (``per_seed``, the per-seed rows) as a small faint dot.
    Returns None."""
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    if per_seed is not None and not per_seed.empty:
        ax.scatter(per_seed["thr_gain"], per_seed["tok_gain"], s=8, color="0.6", alpha=0.6, zorder=2, label="one seed")
    for lbl, g in table.groupby("label"):
        color = LABEL_COLORS.get(lbl, "k")
        if "tok_gain_sd" in g and g[["tok_gain_sd", "thr_gain_sd"]].notna().any().any():
            ax.errorbar(g["thr_gain"], g["tok_gain"], xerr=g["thr_gain_sd"], yerr=g["tok_gain_sd"], fmt="none",
                        ecolor=color, lw=1, zorder=3)
        ax.scatter(g["thr_gain"], g["tok_gain"], s=40, color=color, label=lbl, zorder=4)
    for r in table.itertuples():
        if np.isfinite(r.thr_gain) and np.isfinite(r.tok_gain):
            ax.annotate(r.transition, (r.thr_gain, r.tok_gain), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("throughput gain Q(b)/Q(a) - 1")
    ax.set_ylabel("token gain T(a)/T(b) - 1")
    ax.set_title("intervention taxonomy" + (" (mean ± sd over seeds)" if "tok_gain_sd" in table else ""))
    _legend(ax)


def taxonomy_scatter(table: pd.DataFrame) -> Figure | None:
    """:func:`taxonomy_axes` of a taxonomy table on a figure of its own. A Figure; None for an empty table."""
    if table.empty:
        return None
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    taxonomy_axes(fig.subplots(), table)
    return fig


def taxonomy_figure(chain: Sequence[Run], names: Sequence[str], table: pd.DataFrame, target: float,
                    per_seed: pd.DataFrame | None = None) -> Figure:
    """A chain of interventions: loss, activation and gradient spectra at matched loss ``target``, and the taxonomy
    scatter of ``table`` (with each seed's point from ``per_seed``, see :func:`taxonomy_axes`). A Figure."""
    fig = Figure(figsize=(15, 3.8), layout="constrained")
    ax_loss, ax_act, ax_grad, ax_tax = fig.subplots(1, 4)
    _loss_axes(ax_loss, chain, names, target)
    matched_spectra(ax_act, chain, names, target, "activations")
    matched_spectra(ax_grad, chain, names, target, "gradients")
    for ax in (ax_loss, ax_act, ax_grad):
        _legend(ax)
    if not table.empty:
        taxonomy_axes(ax_tax, table, per_seed)
    return fig

"""Figures of the weight-spectrum phenomena (SPEC 5.1-5.3): SoSD onset vs loss knee, cos to final,
the compression wave, depth profiles (compression heatmaps: ``figures.heatmaps``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .figures import _grid, _kinds


def sosd_figure(series: pd.DataFrame, scalars: pd.DataFrame, table: pd.DataFrame, verdict: dict,
                curves: pd.DataFrame) -> Figure | None:
    """SD variation per step per kind (median over layers; LR-normalized ``sd_variation_lr`` when the run logged a
    learning rate) with the median onset per kind, the loss with its knee and the median onset, and cos to the
    final state. ``series``: :func:`~specscope.analysis.sosd.variation_series`. A Figure; None without samples."""
    col = "sd_variation_lr" if series["sd_variation_lr"].notna().any() else "sd_variation"
    sd = series.dropna(subset=[col])
    if sd.empty:
        return None
    fig, axes = _grid(3, width=4.8, height=3.2, ncols=3)
    ax_sd, ax_loss, ax_cos = axes
    for i, kind in enumerate(_kinds(sd)):
        g = sd[sd["kind"] == kind].groupby("step")[col].median()
        ax_sd.semilogy(g.index, g.clip(lower=1e-12), color=f"C{i}", label=kind)
        on = verdict.get("onset_by_kind", {}).get(kind)
        if on is not None:
            ax_sd.axvline(on, color=f"C{i}", lw=0.7, ls=":")
    ax_sd.set_title(f"{col} per step (median over layers); dotted: onsets", fontsize=9)
    if "loss" in scalars:
        tr = scalars[["step", "loss"]].dropna()
        ax_loss.plot(tr["step"], tr["loss"], color="0.7", lw=0.7, label="train")
    if "val_loss" in scalars:
        va = scalars[["step", "val_loss"]].dropna()
        ax_loss.plot(va["step"], va["val_loss"], "o-", ms=2.5, color="C3", label="validation")
    if verdict.get("knee") is not None:
        ax_loss.axvline(verdict["knee"], color="k", lw=0.8, ls="--", label=f"knee ({verdict.get('knee_loss')})")
    if verdict.get("onset_median") is not None:
        ax_loss.axvline(verdict["onset_median"], color="C0", lw=0.8, ls=":", label="median SoSD onset")
    ax_loss.set_title("loss, knee and onset")
    for c_name, style in (("cos_sd_final", "--"), ("cos_w_final", "-")):
        if c_name in curves and curves[c_name].notna().any():
            c = curves.groupby("step")[c_name].median().dropna()
            ax_cos.plot(c.index, c.to_numpy(), style, color="C0" if c_name == "cos_sd_final" else "C1", label=c_name)
    ax_cos.set_title("cos to the final spectrum (dashed) / weights (solid)")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    return fig


def wave_figure(table: pd.DataFrame, verdict: dict) -> Figure | None:
    """Compression gradient across depth and the wave-front layer over time, from
    :func:`~specscope.analysis.lifecycle.compression_waves`. A Figure; None without a finite gradient."""
    if table.empty or not np.isfinite(table["gradient"]).any():
        return None
    fig, axes = _grid(2, width=5.2, height=3.0, ncols=2)
    axes[0].plot(table["step"], table["gradient"], color="C0")
    axes[0].axhline(0, color="0.6", lw=0.8)
    if verdict.get("reversal_step") is not None:
        axes[0].axvline(verdict["reversal_step"], color="C3", ls=":", label=f"reversal at {verdict['reversal_step']}")
        axes[0].legend(fontsize=7)
    axes[0].set_title("compression gradient across depth (slope vs layer)")
    axes[1].plot(table["step"], table["front_layer"], "o", ms=2.5, color="C1")
    axes[1].set_title(f"wave front layer · {verdict.get('direction', '')}, {verdict.get('velocity_layers_per_step', np.nan):.3g} layers/step")
    for ax in axes:
        ax.set_xlabel("step")
    return fig


def depth_profile_figure(final: pd.DataFrame, metric: str) -> Figure | None:
    """Final ``metric`` by layer, one line per kind (Q/K solid, the rest dashed), from
    :func:`~specscope.analysis.lifecycle.final_metric`. A Figure; None when it is empty."""
    if final.empty:
        return None
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for i, kind in enumerate(_kinds(final)):
        g = final[final["kind"] == kind].sort_values("layer")
        ax.plot(g["layer"], g[metric], "o-" if kind in ("q", "k") else "s--", ms=3.5, color=f"C{i}", label=kind)
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.set_title(f"final {metric} across depth")
    ax.legend(fontsize=7, ncol=4)
    return fig


def pruning_figure(importance: pd.DataFrame, summary: pd.DataFrame, metric: str) -> Figure | None:
    """Block importance beside its alpha, and delta-perplexity vs k per pruning rule. A Figure; None without an
    importance table."""
    if importance.empty:
        return None
    fig, (ax_imp, ax_k) = _grid(2, width=5.2, height=3.2, ncols=2)
    ax_imp.bar(importance["layer"], importance["delta_loss"], color="C0", label="importance (Δ loss when skipped)")
    ax_imp.set_xlabel("block")
    ax_imp.set_ylabel("Δ held-out loss")
    if metric in importance:
        t = ax_imp.twinx()
        t.plot(importance["layer"], importance[metric], "o-", color="C3")
        t.set_ylabel(metric, color="C3")
    ax_imp.set_title("block importance and alpha")
    for j, rule in enumerate(["spectral", "last_n", "random"]):
        g = summary[summary["rule"] == rule]
        if not g.empty:
            ax_k.errorbar(g["k"], g["delta_ppl"], yerr=g["std"], marker="o", ms=3, capsize=2, color=f"C{j}", label=rule)
    ax_k.set_yscale("symlog", linthresh=0.1)
    ax_k.set_xlabel("blocks removed k")
    ax_k.set_title("Δ perplexity after pruning")
    ax_k.legend(fontsize=7)
    return fig

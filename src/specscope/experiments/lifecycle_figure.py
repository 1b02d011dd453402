"""The lifecycle study's figure: one row per block kind of the deepest model (compression heatmap, the
half-compression steps ``t50`` over depth with the fitted front per seed, the final ``alpha_sv`` profile
per seed), and a last row with the pruning curves, importance against alpha and ``delta_alpha`` against
depth."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analysis.lifecycle import SV_ALPHA, final_metric
from ..analysis.waves import compression_frame
from ..models import BLOCK_KINDS
from ..store.artifacts import load_artifact
from ..store.reader import open_run


def _kind_row(axes, kind: str, runs: pd.DataFrame, waves: pd.DataFrame) -> None:
    first = open_run(runs["run_dir"].iloc[0])
    comp = compression_frame(first)
    grid = comp[comp["kind"] == kind].pivot_table(index="layer", columns="step", values="compression", aggfunc="mean")
    ax = axes[0]
    if not grid.empty:
        steps = grid.columns.to_numpy()
        ax.pcolormesh(steps, grid.index.to_numpy(), grid.to_numpy(), cmap="magma", shading="nearest")
        ax.set_xscale("symlog", linthresh=max(1, steps[1] if len(steps) > 1 else 1))
    ax.set_title(f"{kind}: compression (seed {runs['seed'].iloc[0]})", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax = axes[1]
    for j, r in enumerate(runs.itertuples()):
        w = waves[(waves["seed"] == r.seed) & (waves["depth"] == r.depth) & (waves["kind"] == kind)]
        if w.empty:
            continue
        w = w.iloc[0]
        layers, t50 = np.asarray(w["layers"], float), np.asarray(w["t50"], float)
        ax.plot(t50, layers, "o", ms=3, color=f"C{j}", label=f"seed {r.seed}: {w['direction']}")
        if np.isfinite(w["front_slope"]) and w["front_slope"] != 0:
            a = np.nanmean(t50 - w["front_slope"] * layers)
            ax.plot(a + w["front_slope"] * layers, layers, "-", lw=0.8, color=f"C{j}")
    ax.set_title(f"{kind}: half-compression step t50 per layer", fontsize=8)
    ax.set_xlabel("step")
    ax.legend(fontsize=6)
    ax = axes[2]
    for j, r in enumerate(runs.itertuples()):
        fm = final_metric(open_run(r.run_dir), SV_ALPHA)
        g = fm[fm["kind"] == kind].sort_values("layer")
        ax.plot(g["layer"], g[SV_ALPHA], "o-", ms=3, color=f"C{j}", label=f"seed {r.seed}")
    ax.set_title(f"{kind}: final {SV_ALPHA} by layer", fontsize=8)
    ax.set_xlabel("layer")


def lifecycle_figure(table: pd.DataFrame, waves: pd.DataFrame, pruning: pd.DataFrame, metric: str):
    """A matplotlib Figure: one row per block kind of the deepest model (rules in the module docstring) and a
    summary row."""
    from matplotlib.figure import Figure

    deep = table[table["depth"] == table["depth"].max()]
    kinds = [k for k in BLOCK_KINDS if k in set(waves["kind"])] if not waves.empty else []
    n = len(kinds) + 1
    fig = Figure(figsize=(4.2 * 3, 2.8 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i, kind in enumerate(kinds):
        _kind_row(axes[i], kind, deep, waves)
    ax = axes[-1][0]
    p = pruning[pruning["depth"] == deep["depth"].iloc[0]] if not pruning.empty else pruning
    for j, rule in enumerate(["spectral", "last_n", "random"]):
        g = p[p["rule"] == rule].groupby("k")["delta_ppl"] if not p.empty else None
        if g is not None and len(g):
            ax.errorbar(g.mean().index, g.mean(), yerr=g.std().fillna(0), marker="o", ms=3, capsize=2, color=f"C{j}",
                        label=rule)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title(f"L{deep['depth'].iloc[0]}: delta perplexity, k blocks pruned", fontsize=8)
    ax.set_xlabel("k")
    ax.legend(fontsize=6)
    ax = axes[-1][1]
    for j, r in enumerate(deep.itertuples()):
        saved = load_artifact(r.run_dir, "pruning")
        if saved is not None and metric in saved[0]["importance"]:
            imp = saved[0]["importance"]
            ax.plot(imp[metric], imp["delta_loss"], "o", ms=3, color=f"C{j}", label=f"seed {r.seed}")
            for x, y, lay in zip(imp[metric], imp["delta_loss"], imp["layer"]):
                ax.annotate(str(lay), (x, y), fontsize=5)
    ax.set_title(f"importance (delta loss) vs {metric}", fontsize=8)
    ax.set_xlabel(metric)
    ax = axes[-1][2]
    ax.loglog(table["depth"], table["delta_alpha"], "o", ms=3)
    ax.set_title(f"delta {SV_ALPHA} (depth range) vs depth", fontsize=8)
    ax.set_xlabel("depth L")
    return fig

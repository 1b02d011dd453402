"""The lifecycle study (SPEC 5.3-5.4) on the stdlib corpus, sized by SPEC 6 for a 2-core CPU: the
same family at several depths; per depth the compression wave, the alpha depth profile, the Q/K-V/O
asymmetry, layer importance vs alpha and the pruning comparison; across depths the fit
``delta_alpha ~ L^beta``. Writes its runs, a CSV table, a claims table and a figure.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..analysis.lifecycle import compression_waves, depth_profiles, depth_scaling
from ..probes import make_pool
from ..store.artifacts import save_artifact
from ..store.reader import open_run
from .common import CorpusStudy, ExperimentResult

log = logging.getLogger(__name__)


@dataclass
class LifecycleExperiment(CorpusStudy):
    """The lifecycle study: one model per depth in ``depths``; ``metric`` ranks the layers, pruning is scored on
    ``prune_sequences`` probe sequences against ``random_seeds`` random prunings."""

    depths: tuple[int, ...] = (4, 8, 12)
    metric: str = "alpha_tail"
    prune_sequences: int = 64
    random_seeds: int = 5

    @classmethod
    def quick(cls) -> "LifecycleExperiment":
        return cls(depths=(2, 3), d_model=32, n_head=2, seq_len=32, steps=40, micro_batch=4, warmup=5, probe_every=5,
                   prune_sequences=8, random_seeds=2, max_corpus_mb=2.0)


def run_lifecycle(cfg: LifecycleExperiment, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    """Train one model per depth under ``out_dir/L<depth>`` and return the study's table (one row per depth),
    claims and figure (also written as ``lifecycle.csv``, ``pruning.csv``, ``lifecycle_claims.csv``,
    ``lifecycle.png``)."""
    from .pruning import pruning_study, summarize_comparison

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = cfg.corpus()
    pool = make_pool(corpus.probe, n=cfg.prune_sequences, seq_len=cfg.seq_len, seed=1)
    rows, runs, prune_rows = [], [], []
    for depth in cfg.depths:
        res = cfg.train_run(corpus, depth, out / f"L{depth}", f"lifecycle-L{depth}", evals=10, progress=progress)
        run = open_run(res.run_dir)
        runs.append(run)
        _, wave = compression_waves(run)
        prof_table, prof = depth_profiles(run, cfg.metric)
        from ..train.load import load_model

        model, _ = load_model(str(res.run_dir))
        torch.manual_seed(cfg.seed)
        importance, comparison, pv = pruning_study(model, pool, metric=cfg.metric, random_seeds=cfg.random_seeds)
        summ = summarize_comparison(comparison)
        save_artifact(res.run_dir, "pruning", {"importance": importance, "summary": summ}, pv)
        summ = summ.assign(depth=depth)
        prune_rows.append(summ)
        qk = prof_table.set_index("kind").reindex(["q", "k"])["inverted_u"].fillna(False).astype(bool)
        rows.append({"depth": depth, "wave_direction": wave.get("direction"), "velocity": wave.get("velocity_layers_per_step"),
                     "gradient_reversal_step": wave.get("reversal_step"), "alpha_peak_layer": prof.get("peak_layer"),
                     "alpha_shape": prof.get("shape", "not measured"), "inverted_u": prof.get("inverted_u"),
                     "inverted_u_qk": bool(qk.any()),
                     "qk_vo_asymmetry": prof.get("qk_vo_asymmetry"), "delta_alpha": prof.get("delta_alpha"),
                     "rho_importance_alpha": pv.get("rho"), "rho_p": pv.get("p"), "prune_k": pv.get("k"),
                     "dppl_spectral": pv.get("delta_ppl_spectral"), "dppl_last_n": pv.get("delta_ppl_last_n"),
                     "dppl_random": pv.get("delta_ppl_random"), "last_n_over_spectral": pv.get("last_n_over_spectral"),
                     "final_val_loss": res.final_val_loss, "run_dir": str(res.run_dir)})
    table = pd.DataFrame(rows)
    table.to_csv(out / "lifecycle.csv", index=False)
    pruning = pd.concat(prune_rows, ignore_index=True) if prune_rows else pd.DataFrame()
    pruning.to_csv(out / "pruning.csv", index=False)
    _, scaling = depth_scaling(runs, cfg.metric)
    claims = lifecycle_claims(table, scaling)
    claims.to_csv(out / "lifecycle_claims.csv", index=False)
    fig = out / "lifecycle.png"
    _lifecycle_figure(table, pruning, cfg.metric).savefig(fig, dpi=110)
    return ExperimentResult(table, claims, out, fig, {"scaling": scaling, "pruning": pruning})


def lifecycle_claims(table: pd.DataFrame, scaling: dict) -> pd.DataFrame:
    """The lifecycle claims table: one row per claim with the paper's statement (``paper``), our number
    over the depths of ``table`` (``ours``) and a ``verdict``; ``scaling`` is :func:`depth_scaling`'s fit."""
    n = len(table)
    rows = [
        {"claim": "compression wave moves from early to late layers", "paper": "early -> late, then reverses",
         "ours": f"{(table['wave_direction'] == 'early -> late').sum()}/{n} depths early -> late; "
                 f"{table['gradient_reversal_step'].notna().sum()}/{n} with a gradient reversal",
         "reproduced": bool((table["wave_direction"] == "early -> late").all())},
        {"claim": "alpha forms an inverted U across depth in deeper models", "paper": "inverted U, peak moves earlier with depth",
         "ours": "; ".join(f"L{r.depth}: {r.alpha_shape} (peak {r.alpha_peak_layer})" for r in table.itertuples()),
         "reproduced": bool(table.sort_values("depth")["inverted_u"].iloc[-1])},
        {"claim": "Q/K carry the depth dependence, V/O compress uniformly", "paper": "Q/K range >> V/O range",
         "ours": ", ".join(f"L{r.depth}: {r.qk_vo_asymmetry:.2f}x" for r in table.itertuples()),
         "reproduced": bool((table["qk_vo_asymmetry"] > 1).all())},
        {"claim": "delta_alpha ~ L^0.26", "paper": "beta = 0.26, R^2 = 0.99",
         "ours": scaling.get("verdict", "n/a"), "reproduced": scaling.get("beta") is not None and 0.1 <= scaling["beta"] <= 0.5},
        {"claim": "alpha predicts layer importance", "paper": "Spearman rho 0.69-0.84",
         "ours": ", ".join(f"L{r.depth}: {r.rho_importance_alpha:.2f}" if r.rho_importance_alpha is not None
                           and np.isfinite(r.rho_importance_alpha) else f"L{r.depth}: n/a" for r in table.itertuples()),
         "reproduced": bool((table["rho_importance_alpha"].fillna(-1) >= 0.5).all())},
        {"claim": "spectral pruning beats Last-N", "paper": "Last-N / spectral = 1.1x-3.6x",
         "ours": ", ".join(f"L{r.depth}: {r.last_n_over_spectral:.2f}x" for r in table.itertuples()),
         "reproduced": bool((table["last_n_over_spectral"] > 1).all())},
    ]
    return pd.DataFrame(rows, columns=["claim", "paper", "ours", "reproduced"])


def _lifecycle_figure(table: pd.DataFrame, pruning: pd.DataFrame, metric: str):
    from matplotlib.figure import Figure

    from ..analysis.lifecycle import compression_frame, final_metric

    n = len(table)
    fig = Figure(figsize=(4.4 * 3, 3.2 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i, row in enumerate(table.itertuples()):
        run = open_run(row.run_dir)
        comp = compression_frame(run)
        grid = comp.pivot_table(index="layer", columns="step", values="compression", aggfunc="mean")
        ax = axes[i][0]
        if not grid.empty:
            steps = grid.columns.to_numpy()
            im = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="magma",
                           extent=(steps.min(), steps.max(), -0.5, grid.index.max() + 0.5))
            fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_title(f"L{row.depth}: compression (mean over kinds)")
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
        fm = final_metric(run, metric)
        ax = axes[i][1]
        for j, kind in enumerate(["q", "k", "v", "o", "mlp_in", "mlp_out"]):
            g = fm[fm["kind"] == kind].sort_values("layer")
            if not g.empty:
                ax.plot(g["layer"], g[metric], "o-" if kind in ("q", "k") else "s--", ms=3, color=f"C{j}", label=kind)
        ax.set_title(f"L{row.depth}: final {metric} by layer")
        ax.set_xlabel("layer")
        ax.legend(fontsize=6, ncol=3)
        ax = axes[i][2]
        p = pruning[pruning["depth"] == row.depth] if not pruning.empty else pruning
        for j, rule in enumerate(["spectral", "last_n", "random"]):
            g = p[p["rule"] == rule] if not p.empty else p
            if not g.empty:
                ax.errorbar(g["k"], g["delta_ppl"], yerr=g["std"], marker="o", ms=3, capsize=2, color=f"C{j}", label=rule)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(f"L{row.depth}: delta perplexity after pruning k blocks")
        ax.set_xlabel("k")
        ax.legend(fontsize=7)
    return fig

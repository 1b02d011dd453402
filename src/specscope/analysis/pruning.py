"""Layer importance and pruning rules (SPEC 5.4), on tables: which blocks each rule removes, and the verdict.

**Spectral rule** (documented): a block's alpha is the mean of ``metric`` over its matrices. For
rank-decay exponents (``alpha_tail``, ``alpha_head``, ``alpha_rank[...]``: larger = a steeper,
more structured spectrum) the blocks with the *lowest* alpha go first; for the ESD tail
exponent (``alpha_mle``, ``alpha_weighted``: larger = a less heavy-tailed, less trained matrix)
the blocks with the *highest* alpha go first. Block 0 is kept unless ``keep_first=False``
(removing the block next to the embedding is catastrophic in every model we tried, and a
position rule, not a spectral one, would be needed to say so). **Last-N**: the last k blocks.
**Random**: k blocks drawn uniformly (mean over seeds).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

ESD_METRICS = ("alpha_mle", "alpha_weighted")


def block_alpha(metrics: pd.DataFrame, metric: str = "alpha_tail") -> pd.Series:
    """Mean ``metric`` per block (layer >= 0) from a wide table with ``layer`` and ``metric`` columns: a float Series
    indexed by layer, ascending."""
    m = metrics[metrics["layer"] >= 0]
    return m.groupby("layer")[metric].mean()


def spectral_order(alpha: pd.Series, metric: str = "alpha_tail", keep_first: bool = True) -> list[int]:
    """Blocks in the order the spectral rule removes them (rule in the module docstring): a list of layer indices,
    first removed first; blocks with a NaN alpha are left out."""
    a = alpha.dropna()
    if keep_first:
        a = a[a.index != a.index.min()]
    return [int(i) for i in a.sort_values(ascending=metric not in ESD_METRICS, kind="stable").index]


def rule_choice(rule: str, n_layers: int, k: int, alpha: pd.Series | None = None, metric: str = "alpha_tail",
                seed: int = 0, keep_first: bool = True) -> list[int]:
    """The ``k`` blocks rule ``spectral``, ``last_n`` or ``random`` removes: a sorted list of layer indices.
    ``alpha`` (from :func:`block_alpha`) is needed by the spectral rule, ``seed`` by the random one; an unknown rule
    raises ValueError."""
    if rule == "spectral":
        return sorted(spectral_order(alpha, metric, keep_first)[:k])
    if rule == "last_n":
        return list(range(n_layers - k, n_layers))
    if rule == "random":
        return sorted(np.random.default_rng(seed).choice(n_layers, size=k, replace=False).tolist())
    raise ValueError(f"unknown pruning rule {rule!r}")


def importance_verdict(importance: pd.DataFrame, metric: str = "alpha_tail") -> dict:
    """Spearman rho of block importance (``delta_loss`` column) against ``metric`` over the blocks where both are
    known: ``{"rho": float, "p": float}`` (two-sided p-value), both None with fewer than 3 blocks."""
    ok = importance.dropna(subset=["delta_loss", metric])
    if len(ok) < 3:
        return {"rho": None, "p": None}
    rho, p = spearmanr(ok[metric], ok["delta_loss"])
    return {"rho": float(rho), "p": float(p)}


def pruning_verdict(comparison: pd.DataFrame) -> dict:
    """Last-N / spectral ratio of delta-perplexity at the largest ``k`` of ``comparison`` (columns ``rule``, ``k``,
    ``delta_ppl``): a dict with ``k`` (blocks removed), ``delta_ppl_spectral``, ``delta_ppl_last_n``,
    ``delta_ppl_random`` (mean over seeds; perplexity units), ``last_n_over_spectral`` (ratio; > 1: the spectral
    rule hurts less) and ``verdict`` (the sentence); only ``verdict`` for an empty comparison."""
    if comparison.empty:
        return {"verdict": "no pruning comparison"}
    kmax = int(comparison["k"].max())
    at = comparison[comparison["k"] == kmax].groupby("rule")["delta_ppl"].mean()
    spec, last, rnd = at.get("spectral", np.nan), at.get("last_n", np.nan), at.get("random", np.nan)
    ratio = float(last / spec) if spec and np.isfinite(spec) and spec > 0 else float("nan")
    better = "spectral" if ratio > 1 else "Last-N" if ratio < 1 else "tie"
    return {"k": kmax, "delta_ppl_spectral": float(spec), "delta_ppl_last_n": float(last), "delta_ppl_random": float(rnd),
            "last_n_over_spectral": ratio,
            "verdict": f"at k = {kmax}: Last-N / spectral delta-perplexity = {ratio:.2f} ({better} hurts less)"}

"""Layer importance and pruning rules (SPEC 5.4), on tables: which blocks each rule removes, and the verdict.

**Spectral rule** (documented): a block's alpha is the mean of ``metric`` over its matrices. Its
**candidates** are the blocks with a finite alpha, block 0 excluded unless ``keep_first=False``
(removing the block next to the embedding is catastrophic in every model we tried, and a position
rule, not a spectral one, would be needed to say so). Direction (:func:`rule_direction`): the
paper finds, among core layers, higher alpha -> more important, for its rank-decay exponent of the
singular values; so for rank-decay exponents (``alpha_sv``, ``alpha_tail``, ``alpha_head``,
``alpha_rank[...]``: larger = a steeper spectrum) the candidates with the *lowest* alpha go first.
For ESD density exponents (``alpha_mle``, ``alpha_weighted``), which fall as the rank-decay exponent
rises, the order flips: the *highest* alpha goes first. **Last-N**: the last k blocks. **Random**:
k blocks drawn uniformly from the spectral rule's candidates (the same set), mean over draws.

**Importance vs alpha**: Spearman rho over all blocks and over the **core** blocks (the first and the
last block excluded, as the paper does), with two-sided p-values. **Direction check**: the run agrees
with the rule's direction when rho over the core blocks has the rule's sign and ``p < P_LEVEL``,
disagrees when it has the opposite sign and ``p < P_LEVEL``, else the check is not significant.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

ESD_METRICS = ("alpha_mle", "alpha_weighted")
P_LEVEL = 0.05
MIN_RANKED = 3  # blocks a Spearman rho needs


def rule_direction(metric: str) -> int:
    """+1 when a higher ``metric`` predicts a more important block (rank-decay exponents: the lowest goes first),
    -1 for ESD density exponents (:data:`ESD_METRICS`: the highest goes first)."""
    return -1 if metric in ESD_METRICS else 1


def direction_text(metric: str) -> str:
    """The spectral rule's direction for ``metric`` as one sentence."""
    if rule_direction(metric) > 0:
        return (f"spectral rule on {metric} (a rank-decay exponent): higher {metric} -> more important, "
                "the lowest goes first (the paper's direction among core layers)")
    return (f"spectral rule on {metric} (an ESD density exponent, falls as the rank-decay exponent rises): higher "
            f"{metric} -> less important, the highest goes first (the paper's direction, flipped)")


def block_alpha(metrics: pd.DataFrame, metric: str = "alpha_tail") -> pd.Series:
    """Mean ``metric`` per block (layer >= 0) from a wide table with ``layer`` and ``metric`` columns: a float Series
    indexed by layer, ascending."""
    m = metrics[metrics["layer"] >= 0]
    return m.groupby("layer")[metric].mean()


def candidates(alpha: pd.Series, keep_first: bool = True) -> list[int]:
    """The blocks the spectral rule (and the random baseline) may remove: those with a finite alpha, block 0 left
    out when ``keep_first``; a list of layer indices, ascending."""
    a = alpha[np.isfinite(alpha.astype(float))]
    return sorted(int(i) for i in a.index if not (keep_first and int(i) == 0))


def spectral_order(alpha: pd.Series, metric: str = "alpha_tail", keep_first: bool = True) -> list[int]:
    """The candidates (:func:`candidates`) in the order the spectral rule removes them (rule in the module
    docstring): a list of layer indices, first removed first."""
    a = alpha.loc[candidates(alpha, keep_first)]
    return [int(i) for i in a.sort_values(ascending=rule_direction(metric) > 0, kind="stable").index]


def rule_choice(rule: str, n_layers: int, k: int, alpha: pd.Series | None = None, metric: str = "alpha_tail",
                seed: int = 0, keep_first: bool = True) -> list[int]:
    """The ``k`` blocks rule ``spectral``, ``last_n`` or ``random`` removes: a sorted list of layer indices (shorter
    than ``k`` when the candidates run out). ``alpha`` (from :func:`block_alpha`) is needed by the spectral rule and
    gives the random rule its candidates (without it: every block but block 0 when ``keep_first``); ``seed`` seeds
    the random draw. An unknown rule raises ValueError."""
    if rule == "spectral":
        return sorted(spectral_order(alpha, metric, keep_first)[:k])
    if rule == "last_n":
        return list(range(n_layers - k, n_layers))
    if rule == "random":
        pool = candidates(alpha, keep_first) if alpha is not None else [i for i in range(n_layers) if not (keep_first and i == 0)]
        if len(pool) < k:
            return sorted(pool)
        return sorted(int(i) for i in np.random.default_rng(seed).choice(pool, size=k, replace=False))
    raise ValueError(f"unknown pruning rule {rule!r}")


def _rho(x: pd.Series, y: pd.Series) -> tuple[float | None, float | None]:
    if len(x) < MIN_RANKED or x.nunique() < 2 or y.nunique() < 2:
        return None, None
    rho, p = spearmanr(x, y)
    return float(rho), float(p)


def core_blocks(layers) -> list[int]:
    """The core blocks: ``layers`` without the first and the last one; a list of layer indices, ascending."""
    ls = sorted(int(x) for x in layers)
    return ls[1:-1]


def importance_verdict(importance: pd.DataFrame, metric: str = "alpha_tail") -> dict:
    """Spearman rho of block importance (``delta_loss`` column) against ``metric``: a dict with ``rho``, ``p`` over
    every block where both are known, ``rho_core``, ``p_core``, ``n_core`` over the core blocks (:func:`core_blocks`
    of all blocks), ``direction`` (:func:`direction_text`), ``expected_sign`` (:func:`rule_direction`) and
    ``direction_check`` (``"agrees"``, ``"disagrees"`` or ``"not significant"``, rule in the module docstring);
    rho and p None with fewer than 3 blocks (or a constant column)."""
    core = core_blocks(importance["layer"])
    ok = importance.dropna(subset=["delta_loss", metric])
    rho, p = _rho(ok[metric], ok["delta_loss"])
    okc = ok[ok["layer"].isin(core)]
    rho_c, p_c = _rho(okc[metric], okc["delta_loss"])
    sign = rule_direction(metric)
    if rho_c is None or p_c >= P_LEVEL or rho_c == 0:
        check = "not significant"
    else:
        check = "agrees" if np.sign(rho_c) == sign else "disagrees"
    return {"rho": rho, "p": p, "rho_core": rho_c, "p_core": p_c, "n_core": int(len(okc)), "direction": direction_text(metric),
            "expected_sign": sign, "direction_check": check}


def pruning_verdict(comparison: pd.DataFrame) -> dict:
    """Last-N / spectral ratio of delta-perplexity at the largest ``k`` of ``comparison`` (columns ``rule``, ``k``,
    ``delta_ppl``): a dict with ``k`` (blocks removed), ``delta_ppl_spectral``, ``delta_ppl_last_n``,
    ``delta_ppl_random`` (mean over draws; perplexity units), ``random_draws``, ``last_n_over_spectral`` (ratio;
    > 1: the spectral rule hurts less) and ``verdict`` (the sentence); only ``verdict`` for an empty comparison."""
    if comparison.empty:
        return {"verdict": "no pruning comparison"}
    kmax = int(comparison["k"].max())
    at = comparison[comparison["k"] == kmax]
    mean = at.groupby("rule")["delta_ppl"].mean()
    spec, last, rnd = mean.get("spectral", np.nan), mean.get("last_n", np.nan), mean.get("random", np.nan)
    ratio = float(last / spec) if spec and np.isfinite(spec) and spec > 0 else float("nan")
    better = "spectral" if ratio > 1 else "Last-N" if ratio < 1 else "tie"
    return {"k": kmax, "delta_ppl_spectral": float(spec), "delta_ppl_last_n": float(last), "delta_ppl_random": float(rnd),
            "random_draws": int((at["rule"] == "random").sum()), "last_n_over_spectral": ratio,
            "verdict": f"at k = {kmax}: Last-N / spectral delta-perplexity = {ratio:.2f} ({better} hurts less)"}

"""Token efficiency across batch sizes, its early forecast, and the intervention taxonomy
(SPEC 5.6-5.7, Spectral Lens sections 3-4), over run stores.

- ``T(B)``: training tokens at the first evaluation whose validation loss is at or below the
  target; ``eps_tok(B) = T(B) / min_B' T(B')`` within a family; ``Q`` = tokens per second. A run
  that never reaches the target is **censored**: it has no ``T`` and no ``eps_tok`` (it is not
  ranked on them, and no ``T`` is made up for it). The default target is the loosest loss every
  run reached (:func:`common_target`), at which no run is censored.
- **Alignment** of runs at a matched loss (first evaluation at or below it), matched tokens
  (the measurement nearest that many tokens) or a matched fraction of each run's steps.
- **Forecast**: the early statistic is the rank-decay exponent of the deepest probed layer's
  activation spectrum (the stored spectrum at the first measurement with at least ``budget``
  tokens; default budget: 20% of the family's median ``T``) over the **tail window chosen by
  the model's width** (SPEC 3, :func:`~specscope.spectra.windows.tail_window` of the spectrum's
  length, which is the width; or a window given), recomputed from the stored spectra over
  **every window of the bank** as well (:func:`~specscope.spectra.windows.bank_windows`).
  Per-family min-max normalization; batch sizes ranked by it ascending (a flatter tail = fewer
  tokens to target). Spearman rho against ``eps_tok`` over the uncensored runs, within each
  family (mean over families with at least 3 such runs) and on the pooled normalized data, per
  window and as a function of the early budget (Spectral Lens Fig. 8).
- **Taxonomy** of a transition a -> b: ``tok_gain = T(a)/T(b) - 1``, ``thr_gain = Q(b)/Q(a) - 1``;
  at matched loss, the change of the activation ``alpha_head``, the JS divergence of the
  gradient spectra and the change of gradient ``rankme``. The activation displacement is
  ``|d alpha_head| / act_scale``, the gradient one ``max(js / js_scale, |d rankme| / rankme_scale)``
  (units of :class:`TaxonomyRule`); the larger is the transition's ``spectral_lean``, reported
  whatever its label. A gain is *measurable* when it is beyond its noise: with several seeds,
  when its 95% confidence interval over seeds (:func:`specscope.analysis.stats.estimate`)
  excludes 0; with one seed, when ``|gain| > gain_eps`` (a documented fixed threshold). A gain
  on one axis is *traded* when the other axis measurably loses at least ``tradeoff`` times as
  much. Labels, checked in this order (:func:`label`):

  1. *no measurable gain*: neither gain is measurable;
  2. *activation-led*: a measurable token gain, not traded, at least as large as any
     measurable throughput gain, with the activation displacement >= the gradient one;
  3. *gradient-led*: the same, with the gradient displacement larger;
  4. *throughput-leaning*: a measurable throughput gain, not traded (it is larger than the
     token gain, else rule 2 or 3 applied);
  5. *mixed / trade-off*: everything else: a gain paid for by a comparable measurable loss on
     the other axis, or measurable losses only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..spectra.powerlaw import alpha_rank
from ..spectra.temporal import js_divergence
from ..spectra.windows import bank_windows, tail_window
from ..store.reader import Run
from .coverage import training_scalars
from .stats import Estimate, estimate

BUDGET_FRACS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def effective_batch(run: Run) -> int | None:
    """Sequences per optimizer step of ``run``: ``train.micro_batch`` x ``train.grad_accum`` from its config, else
    its ``batch`` config key; None when neither is set."""
    tr = run.config.get("train", {})
    if "micro_batch" in tr:
        return int(tr["micro_batch"]) * int(tr.get("grad_accum", 1))
    return run.config.get("batch")


def family_of(run: Run) -> str:
    """The family name of ``run`` (runs of one family differ only in batch size): the explicit ``family`` config key,
    else the model config as ``"k=v,..."`` (vocabulary size left out), else ``"default"``."""
    if "family" in run.config:
        return str(run.config["family"])
    model = run.config.get("model", {})
    return ",".join(f"{k}={v}" for k, v in sorted(model.items()) if k != "vocab_size") or "default"


def _evals(run: Run) -> pd.DataFrame:
    sc = training_scalars(run)
    if "val_loss" not in sc:
        return pd.DataFrame(columns=["step", "tokens", "val_loss"])
    return sc[["step", "tokens", "val_loss"]].dropna(subset=["val_loss"]).sort_values("step")


def tokens_to_target(run: Run, target: float) -> float | None:
    """Training tokens at the first evaluation with validation loss <= ``target`` (same units as the logged loss),
    as a float; None if the run never reached it (censored)."""
    ev = _evals(run)
    hit = ev[ev["val_loss"] <= target]
    return float(hit["tokens"].iloc[0]) if len(hit) else None


def throughput(run: Run) -> float:
    """Training throughput ``Q`` of ``run`` in tokens per second: the run summary's ``tokens_per_s``, else the
    median of the logged ``tokens_per_s`` scalar; NaN when neither exists."""
    summ = run.meta.get("summary", {})
    if summ.get("tokens_per_s"):
        return float(summ["tokens_per_s"])
    sc = training_scalars(run)
    return float(sc["tokens_per_s"].median()) if "tokens_per_s" in sc else float("nan")


def efficiency(runs: Sequence[Run], target: float | None) -> pd.DataFrame:
    """One row per run: a DataFrame with columns ``run``, ``family``, ``batch`` (sequences per step), ``T`` (tokens to
    ``target``, a float; NaN when censored or without a target), ``censored`` (True when the run has validation losses
    but never reached ``target``), ``Q`` (tokens per second) and ``eps_tok`` (``T`` over the least ``T`` of its
    family's uncensored runs; 1 = the most token-efficient batch; NaN when censored)."""
    rows = []
    for r in runs:
        T = tokens_to_target(r, target) if target is not None else None
        rows.append({"run": r.run_id, "family": family_of(r), "batch": effective_batch(r),
                     "T": float("nan") if T is None else T,
                     "censored": bool(target is not None and T is None and len(_evals(r))), "Q": throughput(r)})
    df = pd.DataFrame(rows, columns=["run", "family", "batch", "T", "censored", "Q"])
    df["T"] = df["T"].astype(float)
    df["eps_tok"] = df["T"] / df.groupby("family")["T"].transform("min")
    return df


def align(runs: Sequence[Run], loss: float | None = None, tokens: float | None = None,
          fraction: float | None = None) -> pd.DataFrame:
    """The step and tokens where each run reaches a matched validation loss (first evaluation at or below
    ``loss``), a matched token count (the logged step nearest ``tokens``) or a matched fraction of its last step:
    a DataFrame with columns ``run``, ``batch``, ``step`` (int) and ``tokens`` (float), object-typed so that a run
    that never matched holds None in both (never NaN: ``step is None`` is the test for a miss). Give exactly one
    of the three, else ValueError."""
    if sum(x is not None for x in (loss, tokens, fraction)) != 1:
        raise ValueError("give exactly one of loss, tokens, fraction")
    rows = []
    for r in runs:
        ev = _evals(r)
        sc = training_scalars(r)
        if loss is not None:
            hit = ev[ev["val_loss"] <= loss]
            row = hit.iloc[0] if len(hit) else None
        elif tokens is not None:
            pts = sc.dropna(subset=["tokens"])
            row = pts.iloc[int(np.argmin(np.abs(pts["tokens"].to_numpy(float) - tokens)))] if len(pts) else None
        else:
            last = int(sc["step"].max())
            row = sc.iloc[int(np.argmin(np.abs(sc["step"].to_numpy() - fraction * last)))]
        rows.append({"run": r.run_id, "batch": effective_batch(r),
                     "step": None if row is None else int(row["step"]),
                     "tokens": None if row is None or pd.isna(row["tokens"]) else float(row["tokens"])})
    return pd.DataFrame(rows, columns=["run", "batch", "step", "tokens"], dtype=object)


def deepest_spectra(run: Run) -> pd.DataFrame:
    """The deepest probed layer's activation spectra of ``run`` as eigenvalues: a DataFrame with columns ``tokens``
    and ``eig`` (a descending float64 array of covariance eigenvalues), one row per measurement (the first stored
    spectrum of that layer at each step), sorted by tokens; empty without activation spectra or tokens."""
    s = run.spectra(probe="activations")
    if s.empty:
        return pd.DataFrame(columns=["tokens", "eig"])
    s = s[(s["layer"] == s["layer"].max())].dropna(subset=["tokens"]).drop_duplicates("step").sort_values("tokens")
    eig = [np.asarray(v, float) ** 2 if q == "sv" else np.asarray(v, float) for v, q in zip(s["values"], s["quantity"])]
    return pd.DataFrame({"tokens": s["tokens"].to_numpy(float), "eig": eig})


def window_label(window: tuple[int, int]) -> str:
    """A rank window ``(a, b)`` as text: ``"a:b"``."""
    return f"{window[0]}:{window[1]}"


def forecast_windows(width: int, window: tuple[int, int] | None = None) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """``(chosen, windows)`` for activation spectra of length ``width`` (the model's width): the tail window chosen by
    width (SPEC 3: :func:`~specscope.spectra.windows.tail_window`), or ``window`` when given, and every bank window
    that fits (:func:`~specscope.spectra.windows.bank_windows`) with the chosen one added; 1-based inclusive ranks."""
    chosen = tuple(window) if window is not None else tail_window(width)
    wins = bank_windows(width)
    if chosen is not None and chosen not in wins:
        wins.append(chosen)
    return chosen, wins


def window_alpha(eig: np.ndarray, window: tuple[int, int]) -> float:
    """The rank-decay exponent (``-slope`` of ``ln p_j`` on ``ln j``, Spectral Lens eq. 2; dimensionless) of the
    trace-normalized eigenvalues ``eig`` over ``window`` (1-based inclusive ranks); NaN when it does not fit."""
    eig = np.asarray(eig, float)
    total = eig.sum()
    if not (np.isfinite(total) and total > 0):
        return float("nan")
    return float(alpha_rank((eig / total)[None, :], tuple(window))[0][0])


def _minmax(x: pd.Series) -> pd.Series:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else x * 0.0


def _rho(df: pd.DataFrame, col: str) -> tuple[float | None, int, float | None]:
    """Spearman rho of ``col`` vs ``eps_tok`` over the uncensored runs with both: (mean within family over families
    with >= 3 runs, number of such families, pooled over the per-family min-max normalized ``col``)."""
    ok = df.dropna(subset=["eps_tok", col])
    rhos = [float(spearmanr(g[col], g["eps_tok"])[0]) for _, g in ok.groupby("family") if len(g) >= 3]
    rhos = [x for x in rhos if np.isfinite(x)]
    norm = ok.groupby("family")[col].transform(_minmax)
    pooled = float(spearmanr(norm, ok["eps_tok"])[0]) if len(ok) >= 3 else None
    return (float(np.mean(rhos)) if rhos else None), len(rhos), (pooled if pooled is not None and np.isfinite(pooled) else None)


def forecast(runs: Sequence[Run], target: float | None = None, budget: float | None = None, budget_frac: float = 0.2,
             window: tuple[int, int] | None = None, spectra: dict[str, pd.DataFrame] | None = None) -> tuple[pd.DataFrame, dict]:
    """Rank batch sizes by their early activation tail exponent (flatter first) and score the ranking.

    ``target`` (validation loss; None: the loosest every run reached, or no target when no run logged a validation
    loss); ``budget`` (tokens) overrides ``budget_frac`` of the family's median uncensored ``T``; ``window`` (1-based
    ranks) overrides the tail window chosen by width; ``spectra`` (run id -> :func:`deepest_spectra`) saves reading
    the stores again.

    Returns ``(table, verdict)``. ``table``: :func:`efficiency`'s columns plus ``budget`` (tokens), ``window``
    (``"a:b"``), ``early_alpha`` (over that window), ``early_alpha_norm`` (min-max within the family, in [0, 1]),
    ``predicted_rank`` (1 = predicted most token-efficient; every run with an early spectrum, censored ones
    included, since the prediction does not use ``T``) and one ``alpha[a:b]`` column per bank window, sorted by
    family and rank. ``verdict``: ``applies``, ``target``, ``window``, ``window_by`` (``"width N"`` or ``"given"``),
    ``rho_within_family`` (mean over families with >= 3 uncensored runs; None when none), ``families_scored``,
    ``rho_pooled``, ``rho_by_window`` and ``rho_pooled_by_window`` (``"a:b"`` -> rho), ``n_runs``, ``n_scored``
    (uncensored runs with an early exponent), ``censored`` (count) and ``censored_runs``, ``predicted_best_batch``
    and ``best_batch`` (family -> batch; the latter by least uncensored ``T``) and ``verdict`` (the sentence, which
    names the window, the budget and the censored runs, or says what the runs lack)."""
    have_val = [r for r in runs if len(_evals(r))]
    if target is None and have_val:
        target = common_target(have_val)
    df = efficiency(runs, target)
    spectra = spectra if spectra is not None else {r.run_id: deepest_spectra(r) for r in runs}
    budgets = {}
    for fam, g in df.groupby("family"):
        Ts = g["T"].dropna()
        budgets[fam] = float(budget) if budget is not None else budget_frac * float(Ts.median()) if len(Ts) else float("nan")
    df["budget"] = df["family"].map(budgets).astype(float)
    width = max((len(s["eig"].iloc[0]) for s in spectra.values() if len(s)), default=0)
    chosen, wins = forecast_windows(width, window) if width else (None, [])
    early = {}
    for run, b in zip(df["run"], df["budget"]):
        s = spectra.get(run, pd.DataFrame(columns=["tokens", "eig"]))
        s = s[s["tokens"] >= b] if np.isfinite(b) else s.head(0)
        early[run] = s["eig"].iloc[0] if len(s) else None
    for w in wins:
        df[f"alpha[{window_label(w)}]"] = [window_alpha(early[r], w) if early[r] is not None else np.nan for r in df["run"]]
    df.insert(df.columns.get_loc("budget") + 1, "window", window_label(chosen) if chosen else None)
    df.insert(df.columns.get_loc("window") + 1, "early_alpha",
              df[f"alpha[{window_label(chosen)}]"] if chosen else np.nan)
    df.insert(df.columns.get_loc("early_alpha") + 1, "early_alpha_norm", df.groupby("family")["early_alpha"].transform(_minmax))
    df.insert(df.columns.get_loc("early_alpha_norm") + 1, "predicted_rank",
              df.groupby("family")["early_alpha"].rank(method="first").astype("Int64"))
    df = df.sort_values(["family", "predicted_rank"]).reset_index(drop=True)
    by_win = {window_label(w): _rho(df, f"alpha[{window_label(w)}]") for w in wins}
    within, n_fam, pooled = _rho(df, "early_alpha") if chosen else (None, 0, None)
    scored = df.dropna(subset=["eps_tok", "early_alpha"])
    best = df.loc[df.dropna(subset=["early_alpha"]).groupby("family")["early_alpha"].idxmin()]
    actual = df.loc[df.dropna(subset=["T"]).groupby("family")["T"].idxmin()]
    censored = df.loc[df["censored"], "run"].tolist()
    verdict = {"applies": bool(len(best)), "target": target, "window": window_label(chosen) if chosen else None,
               "window_by": "given" if window is not None else f"width {width}",
               "rho_within_family": within, "families_scored": n_fam, "rho_pooled": pooled,
               "rho_by_window": {k: v[0] for k, v in by_win.items()}, "rho_pooled_by_window": {k: v[2] for k, v in by_win.items()},
               "n_runs": len(df), "n_scored": len(scored), "censored": len(censored), "censored_runs": censored,
               "predicted_best_batch": {str(f): _int(b) for f, b in zip(best["family"], best["batch"])},
               "best_batch": {str(f): _int(b) for f, b in zip(actual["family"], actual["batch"])}}
    verdict["verdict"] = _sentence(df, verdict, best, have_val, runs)
    return df, verdict


def _int(x) -> int | None:
    return None if x is None or pd.isna(x) else int(x)


def _sentence(df: pd.DataFrame, v: dict, best: pd.DataFrame, have_val: list, runs: Sequence[Run]) -> str:
    """The forecast's verdict sentence: the predicted best batch, the window and budget, rho's sample and the censored
    runs; or what the runs lack."""
    lacks = []
    if not have_val:
        lacks.append("no validation loss logged: no T(B), eps_tok or rho (give a token budget to rank only)")
    if v["window"] is None:
        lacks.append("no activation spectra stored: no early tail exponent (add the Activations probe)")
    elif df["budget"].isna().all():
        lacks.append("no token budget: no run reached a target (give a token budget)")
    if df["batch"].isna().any():
        lacks.append(f"{int(df['batch'].isna().sum())} run(s) without a batch size in their config (train.micro_batch or batch)")
    if not len(best):
        return "; ".join(lacks or ["no activation spectrum at the budget"])
    budgets = ", ".join(f"{b:,.0f}" for b in sorted(set(df["budget"].dropna())))
    text = (f"predicted most token-efficient batch: " + ", ".join(f"B={_int(b)}" for b in best["batch"])
            + f" (early alpha over tail window {v['window']}, "
            + ("given" if v["window_by"] == "given" else f"chosen by {v['window_by']}") + f", at {budgets} tokens)")
    if v["target"] is not None:
        text += f"; target loss {v['target']:.4g}: rho over {v['n_scored']} uncensored run(s) of {v['n_runs']}"
        if v["censored"]:
            text += f", {v['censored']} censored (never reached the target: no T, not ranked): " + ", ".join(v["censored_runs"])
        if v["rho_within_family"] is None:
            text += "; too few uncensored runs for rho (>= 3 a family)"
    return "; ".join([text, *lacks])


def early_alpha(run: Run, budget: float, window: tuple[int, int] | None = None) -> float:
    """The rank-decay exponent of the deepest probed layer's activation spectrum at the first measurement with >=
    ``budget`` tokens, over ``window`` (default: the tail window chosen by the spectrum's width): a float, NaN when
    there is none."""
    s = deepest_spectra(run)
    s = s[s["tokens"] >= budget]
    if not len(s):
        return float("nan")
    eig = s["eig"].iloc[0]
    w, _ = forecast_windows(len(eig), window)
    return window_alpha(eig, w) if w is not None else float("nan")


def common_target(runs: Sequence[Run]) -> float:
    """The loosest loss every run reached: the largest of the runs' best validation losses (a float, in the units
    of the logged loss); ValueError when no run has a validation loss."""
    best = [float(_evals(r)["val_loss"].min()) for r in runs if len(_evals(r))]
    best = [b for b in best if np.isfinite(b)]
    if not best:
        raise ValueError("no run has a validation loss")
    return max(best)


def rho_vs_budget(runs: Sequence[Run], target: float | None, median_T: float, fracs: Sequence[float] = BUDGET_FRACS,
                  window: tuple[int, int] | None = None) -> pd.DataFrame:
    """Spearman rho (within family, uncensored runs) of the forecast at early budgets ``frac * median_T`` (Spectral Lens
    Fig. 8): a DataFrame with columns ``budget_frac``, ``budget_tokens``, ``rho`` (the chosen window) and one
    ``rho[a:b]`` per bank window (None where no family could be scored)."""
    spectra = {r.run_id: deepest_spectra(r) for r in runs}
    rows = []
    for f in fracs:
        _, v = forecast(runs, target=target, budget=f * median_T, window=window, spectra=spectra)
        rows.append({"budget_frac": f, "budget_tokens": f * median_T, "rho": v["rho_within_family"],
                     **{f"rho[{k}]": x for k, x in v["rho_by_window"].items()}})
    return pd.DataFrame(rows)


def lens_summary(runs: Sequence[Run], target: float | None = None, budget_frac: float = 0.2,
                 window: tuple[int, int] | None = None) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """``(table, verdict, rho_table)``: :func:`forecast` at ``budget_frac`` of the median ``T`` (``target`` None: the
    loosest loss every run reached), its verdict with ``median_T`` (tokens, over uncensored runs) added, and
    :func:`rho_vs_budget` (empty without a median ``T``)."""
    table, verdict = forecast(runs, target=target, budget_frac=budget_frac, window=window)
    median_T = float(table["T"].dropna().median()) if table["T"].notna().any() else float("nan")
    curve = (rho_vs_budget(runs, verdict["target"], median_T, window=window) if np.isfinite(median_T)
             else pd.DataFrame(columns=["budget_frac", "budget_tokens", "rho"]))
    return table, {**verdict, "median_T": median_T}, curve


def chain_stages(chain: Sequence[Run], target: float, names: Sequence[str]) -> pd.DataFrame:
    """One row per stage of a chain: a DataFrame with columns ``stage`` (from ``names``), ``T`` (tokens to
    ``target``), ``Q`` (tokens per second), ``final_val_loss`` (from the run summary) and ``run``."""
    df = efficiency(chain, target).assign(stage=list(names))
    df["final_val_loss"] = [r.meta.get("summary", {}).get("final_val_loss") for r in chain]
    return df[["stage", "T", "Q", "final_val_loss", "run"]]


@dataclass
class TaxonomyRule:
    """The thresholds of the taxonomy labels (module docstring): ``gain_eps`` (with one seed, a relative gain whose
    size is at most this counts as no change; with seeds the gains' own spread decides), ``tradeoff`` (a measurable
    loss on the other axis of at least this fraction of a gain makes it a trade-off), and the size of one unit of
    displacement for ``|d alpha_head|`` (``act_scale``), the gradient-spectrum JS divergence (``js_scale``, nats)
    and the relative change of gradient ``rankme`` (``rankme_scale``)."""

    gain_eps: float = 0.02  # one seed: gains within +-2% count as no change
    tradeoff: float = 0.5  # a measurable loss of >= half the other axis's gain makes a trade-off
    act_scale: float = 0.05  # |d alpha_head| that counts as one unit of activation displacement
    js_scale: float = 0.01  # gradient-spectrum JS divergence of one unit
    rankme_scale: float = 0.1  # relative change of gradient rankme of one unit


def _at_step(run: Run, probe: str, step: int, metric: str | None = None):
    """The last measurement of ``probe`` at or before ``step``: a metric value (deepest layer) or a spectrum."""
    if metric is not None:
        m = run.metrics(probe=probe, metric=metric)
        if m.empty:
            return float("nan")
        m = m[(m["layer"] == m["layer"].max()) & (m["step"] <= step)]
        return float(m.sort_values("step")["value"].iloc[-1]) if len(m) else float("nan")
    s = run.spectra(probe=probe)
    s = s[s["step"] <= step] if not s.empty else s
    return None if s.empty else np.asarray(s.sort_values("step")["values"].iloc[-1], dtype=float)


def gain_sign(gain: float | Estimate, eps: float) -> int:
    """Whether a relative gain is measurable: +1 (measurably above 0), -1 (measurably below) or 0 (within noise,
    or not finite). An :class:`~specscope.analysis.stats.Estimate` with an interval (several seeds) is measurable
    when its interval excludes 0; a float, or an estimate of one seed, when its size exceeds ``eps``."""
    if isinstance(gain, Estimate):
        if gain.has_interval:
            return gain.side(0.0)
        gain = gain.mean
    if not np.isfinite(gain) or abs(gain) <= eps:
        return 0
    return 1 if gain > 0 else -1


def label(tok_gain: float | Estimate, thr_gain: float | Estimate, act: float, grad: float,
          rule: TaxonomyRule = TaxonomyRule()) -> str:
    """The taxonomy label of one transition from its relative token and throughput gains (floats of one seed, or
    :class:`~specscope.analysis.stats.Estimate` over seeds) and its activation and gradient displacements (units of
    ``rule``): ``"no measurable gain"``, ``"activation-led"``, ``"gradient-led"``, ``"throughput-leaning"`` or
    ``"mixed / trade-off"``, the rules checked in the module docstring's order."""
    t, q = gain_sign(tok_gain, rule.gain_eps), gain_sign(thr_gain, rule.gain_eps)
    tv = tok_gain.mean if isinstance(tok_gain, Estimate) else float(tok_gain)
    qv = thr_gain.mean if isinstance(thr_gain, Estimate) else float(thr_gain)
    if t == 0 and q == 0:
        return "no measurable gain"
    traded = (t == 1 and q == -1 and -qv >= rule.tradeoff * tv) or (q == 1 and t == -1 and -tv >= rule.tradeoff * qv)
    if t == 1 and not traded and (q != 1 or tv >= qv):
        return "activation-led" if act >= grad else "gradient-led"
    if q == 1 and not traded:
        return "throughput-leaning"
    return "mixed / trade-off"


def taxonomy(chain: Sequence[Run], target: float | None = None, names: Iterable[str] | None = None,
             rule: TaxonomyRule = TaxonomyRule()) -> pd.DataFrame:
    """One row per consecutive transition of ``chain`` (e.g. baseline -> RoPE -> Muon -> untied).

    ``target``: one matched loss for the whole chain; None compares each pair at the loosest loss
    both reached (each transition then resolves its own gain, not the chain's slowest run's).

    Returns a DataFrame with columns ``transition`` (``"a -> b"``), ``target`` (loss), ``T_a``, ``T_b`` (tokens),
    ``tok_gain``, ``thr_gain`` (relative, 0 = no change), ``log_tok_gain``, ``log_thr_gain`` (``log1p`` of them),
    ``d_alpha_head``, ``d_alpha_tail`` (activation exponents, b - a), ``grad_js`` (JS divergence of the gradient
    spectra, nats), ``d_grad_rankme`` (relative), ``act_shift``, ``grad_shift`` (displacements in the units of
    ``rule``), ``spectral_lean`` (``activation`` or ``gradient``) and ``label`` (``unscored`` without both gains)."""
    names = list(names) if names is not None else [r.run_id for r in chain]
    Q = [throughput(r) for r in chain]
    rows = []
    for i in range(len(chain) - 1):
        a, b = chain[i], chain[i + 1]
        t = target if target is not None else common_target([a, b])
        Ta, Tb = tokens_to_target(a, t), tokens_to_target(b, t)
        tok = Ta / Tb - 1 if Ta and Tb else float("nan")
        thr = Q[i + 1] / Q[i] - 1 if Q[i] else float("nan")
        sa, sb = align([a, b], loss=t)["step"].tolist()
        if sa is None or sb is None:
            sa, sb = int(a.scalars()["step"].max()), int(b.scalars()["step"].max())
        d_head = _at_step(b, "activations", sb, "alpha_head") - _at_step(a, "activations", sa, "alpha_head")
        d_tail = _at_step(b, "activations", sb, "alpha_tail") - _at_step(a, "activations", sa, "alpha_tail")  # reported, not labeled
        ga, gb = _at_step(a, "gradients", sa), _at_step(b, "gradients", sb)
        js = js_divergence(ga ** 2, gb ** 2) if ga is not None and gb is not None else float("nan")
        ra, rb = _at_step(a, "gradients", sa, "rankme"), _at_step(b, "gradients", sb, "rankme")
        d_rankme = (rb - ra) / ra if ra else float("nan")
        act = abs(d_head) / rule.act_scale if np.isfinite(d_head) else 0.0
        grad = max(js / rule.js_scale if np.isfinite(js) else 0.0, abs(d_rankme) / rule.rankme_scale if np.isfinite(d_rankme) else 0.0)
        rows.append({"transition": f"{names[i]} -> {names[i + 1]}", "target": t, "T_a": Ta, "T_b": Tb, "tok_gain": tok,
                     "thr_gain": thr, "log_tok_gain": np.log1p(tok) if tok > -1 else float("nan"),
                     "log_thr_gain": np.log1p(thr) if thr > -1 else float("nan"),
                     "d_alpha_head": d_head, "d_alpha_tail": d_tail, "grad_js": js, "d_grad_rankme": d_rankme,
                     "act_shift": act, "grad_shift": grad,
                     "spectral_lean": "activation" if act >= grad else "gradient",
                     "label": label(tok, thr, act, grad, rule) if np.isfinite(tok) and np.isfinite(thr) else "unscored"})
    return pd.DataFrame(rows)


SEED_MEANS = ("T_a", "T_b", "d_alpha_head", "d_alpha_tail", "grad_js", "d_grad_rankme", "act_shift", "grad_shift")


def taxonomy_over_seeds(tables: Sequence[pd.DataFrame], rule: TaxonomyRule = TaxonomyRule()) -> pd.DataFrame:
    """The transitions of one chain trained once per seed, labeled from their seed-averaged numbers with the gains'
    noise (module docstring): ``tables`` holds one :func:`taxonomy` table per seed.

    Returns one row per transition (in the first table's order): ``transition``, ``seeds`` (seeds with both gains),
    ``tok_gain`` and ``thr_gain`` (relative, mean over seeds) each with ``_sd`` (sample sd over seeds) and
    ``_lo`` / ``_hi`` (95% Student-t interval; NaN with one seed), the means of :data:`SEED_MEANS` (units of
    :func:`taxonomy`), ``noise`` (how "within noise" was decided), ``spectral_lean``, ``label`` (``unscored``
    when no seed has both gains) and ``seed_labels`` (each seed's own label, ``;``-separated)."""
    if not tables:
        return pd.DataFrame()
    allrows = pd.concat(list(tables), ignore_index=True)
    rows = []
    for tr in dict.fromkeys(tables[0]["transition"]):
        g = allrows[allrows["transition"] == tr]
        scored = g[np.isfinite(g["tok_gain"].astype(float)) & np.isfinite(g["thr_gain"].astype(float))]
        tok, thr = estimate(scored["tok_gain"]), estimate(scored["thr_gain"])
        means = {c: float(pd.to_numeric(g[c], errors="coerce").mean()) for c in SEED_MEANS if c in g}
        act, grad = means.get("act_shift", 0.0), means.get("grad_shift", 0.0)
        noise = (f"measurable: 95% CI over {tok.n} seeds excludes 0" if tok.has_interval
                 else f"measurable: |gain| > {rule.gain_eps:g} (one seed)")
        row = {"transition": tr, "seeds": tok.n}
        for name, est in (("tok_gain", tok), ("thr_gain", thr)):
            row.update({name: est.mean, f"{name}_sd": est.sd, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
        rows.append({**row, **means, "noise": noise, "spectral_lean": "activation" if act >= grad else "gradient",
                     "label": label(tok, thr, act, grad, rule) if tok.n else "unscored",
                     "seed_labels": "; ".join(g["label"].astype(str))})
    return pd.DataFrame(rows)

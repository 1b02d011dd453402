"""The SoSD study (SPEC 5.1) on the stdlib corpus, sized by SPEC 6 for a 2-core CPU.

One small GPT trained once per variant and seed (``cfg.seeds``), the weight probe paired (``t`` and ``t + 1``)
so that the SD variation between consecutive optimizer steps is measured:

- ``adamw-wsd-wd0`` and ``muon-wsd-wd0``: the paper's Muon vs AdamW comparison (WSD schedule, weight decay 0);
- ``adamw-wsd``: the same with weight decay 0.1 (the weight-decay level against ``adamw-wsd-wd0``, and the
  constant-rate control of the step cut at mid-run);
- ``step``: AdamW, weight decay 0.1, the rate cut ten-fold at 50% and 75% of the run (the step-decay drop).

Per run (:func:`sosd_row`): the median SoSD onset over matrices and its bootstrap interval, the knee of the
validation loss and their distance, the floors of the raw and LR-normalized SD variation, the raw SD
variation's drop across mid-run, and the first steps where the median ``cos_sd_final`` / ``cos_w_final``
reach 0.99. The claims table (:func:`sosd_claims`) puts the paper's statements beside our numbers with their
spread over seeds and a verdict from :mod:`specscope.analysis.stats`.

Default size: 2 blocks, width 64, 64-token sequences, 16 sequences a step, 500 steps, the probe every 20 steps
(paired), 25 evaluations: about 30 s a run on an idle 2-core CPU, so ``specscope experiment sosd --seeds 3``
(12 runs) takes about 7 minutes there (measured 2-3x longer on a shared machine).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..analysis.sosd import sosd, sosd_curves, variation_series
from ..analysis.stats import difference, estimate, verdict
from ..store.reader import open_run
from .claims import claim, claims_frame
from .common import CorpusStudy, ExperimentResult

log = logging.getLogger(__name__)

VARIANTS = {
    "adamw-wsd-wd0": {"schedule": "wsd", "weight_decay": 0.0},
    "muon-wsd-wd0": {"schedule": "wsd", "weight_decay": 0.0, "optimizer": "muon"},
    "adamw-wsd": {"schedule": "wsd", "weight_decay": 0.1},
    "step": {"schedule": "step", "weight_decay": 0.1},
}
STABLE = 0.99  # the cosine to the final state from which a curve counts as settled
ALIGNED = 0.1  # onset and knee at most this fraction of the run apart: "aligned"


@dataclass
class SosdExperiment(CorpusStudy):
    """The SoSD study: one ``n_layer``-block model trained once per variant (a name of :data:`VARIANTS`) and seed,
    with the paired weight probe every ``probe_every`` steps and about ``evals`` validation evaluations."""

    n_layer: int = 2
    d_model: int = 64
    n_head: int = 2
    seq_len: int = 64
    steps: int = 500
    warmup: int = 25
    probe_every: int = 20
    paired: bool = True
    evals: int = 25
    max_corpus_mb: float | None = 4.0
    variants: tuple[str, ...] = tuple(VARIANTS)

    @classmethod
    def quick(cls) -> "SosdExperiment":
        """A seconds-long configuration for tests: every variant, one seed, 60 steps."""
        return cls(n_layer=1, d_model=32, n_head=2, seq_len=32, steps=60, micro_batch=4, warmup=5, probe_every=5,
                   evals=12, max_corpus_mb=2.0)


def _drop(series: pd.DataFrame, at: int, n: int = 3) -> float:
    """Median raw SD variation per step (median over matrices at each sample) over the ``n`` samples before step
    ``at``, divided by that over the ``n`` samples from ``at`` on (the ratio; NaN when either side is empty)."""
    med = series.groupby("step")["sd_variation"].median().dropna()
    before, after = med[med.index < at].tail(n), med[med.index >= at].head(n)
    if not len(before) or not len(after) or not after.median() > 0:
        return float("nan")
    return float(before.median() / after.median())


def _first_at_least(curve: pd.Series, level: float) -> float:
    hit = curve[curve >= level]
    return float(hit.index[0]) if len(hit) else float("nan")


def sosd_row(variant: str, run_dir: str | Path, steps: int, seed: int = 0, stable: float = STABLE) -> dict:
    """One run's SoSD summary from its stored run: ``onset_median`` (step) with ``onset_lo`` / ``onset_hi``,
    ``onset_raw`` (the median onset on the raw SD variation, step),
    ``knee`` (step) and ``knee_loss``, ``distance_frac`` (fraction of the run), ``floor`` (raw SD variation per
    step) and ``floor_lr`` (unitless), ``onset_frac`` (matrices with an onset), ``sd_drop_at_mid`` (ratio of the
    raw SD variation before / after step ``steps // 2``), ``sd_stable_step`` / ``w_stable_step`` (first steps where
    the median ``cos_sd_final`` / ``cos_w_final`` reach ``stable``), ``final_val_loss`` (nats per token), ``paired``
    and ``run_dir``."""
    run = open_run(run_dir)
    table, v = sosd(run)
    curves = sosd_curves(run)
    sc = run.scalars()
    val = sc["val_loss"].dropna() if "val_loss" in sc else pd.Series(dtype=float)
    n = max(1, v.get("matrices", 0) or 0)
    return {"variant": variant, "seed": seed, "onset_median": v.get("onset_median"), "onset_lo": v.get("onset_lo"),
            "onset_hi": v.get("onset_hi"), "onset_raw": v.get("onset_median_raw"), "knee": v.get("knee"), "knee_loss": v.get("knee_loss"),
            "distance_frac": v.get("distance_frac"), "floor": v.get("floor"), "floor_lr": v.get("floor_lr"),
            "onset_frac": (v.get("matrices_with_onset") or 0) / n,
            "sd_drop_at_mid": _drop(variation_series(run), steps // 2),
            "sd_stable_step": _first_at_least(curves.groupby("step")["cos_sd_final"].median().dropna(), stable),
            "w_stable_step": _first_at_least(curves.groupby("step")["cos_w_final"].median().dropna(), stable),
            "final_val_loss": float(val.iloc[-1]) if len(val) else float("nan"), "paired": v.get("paired"),
            "run_dir": str(run_dir)}


def run_sosd(cfg: SosdExperiment, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    """Train one run per variant and seed under ``out_dir/<variant>/seed<s>`` and return the study's table, claims
    and figure (see :func:`summarize_sosd`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = cfg.corpus()
    for name in cfg.variants:
        for s in cfg.seeds:
            cfg.train_run(corpus, cfg.n_layer, out / name / f"seed{s}", f"sosd-{name}-s{s}", evals=cfg.evals,
                          progress=progress, seed=s, ckpt_every=max(1, cfg.steps // 10), **VARIANTS[name])
    return summarize_sosd(out, cfg.variants, cfg.steps, cfg.seeds)


def summarize_sosd(out_dir: str | Path, variants: Iterable[str], steps: int, seeds: Iterable[int] = (0,)) -> ExperimentResult:
    """Table (one row per variant and seed), claims and figure of finished SoSD runs under
    ``out_dir/<variant>/seed<s>`` (no training); ``extra["seeds"]`` is the number of seeds."""
    out = Path(out_dir)
    seeds = tuple(seeds)
    table = pd.DataFrame([sosd_row(name, out / name / f"seed{s}", steps, s) for name in variants for s in seeds])
    table.to_csv(out / "sosd.csv", index=False)
    claims = sosd_claims(table, steps)
    fig = out / "sosd.png"
    _sosd_figure(table, steps).savefig(fig, dpi=110)
    return ExperimentResult(table, claims, out, fig, extra={"seeds": len(seeds)})


def _per_seed(table: pd.DataFrame, variant: str, col: str) -> pd.Series:
    """``col`` of ``variant`` indexed by seed, as floats (None: NaN); empty when the variant did not run or the table
    has no such column."""
    if col not in table:
        return pd.Series(dtype=float)
    return pd.to_numeric(table[table["variant"] == variant].set_index("seed")[col], errors="coerce").astype(float)


def _paired(table: pd.DataFrame, a: str, b: str, col: str, fn=np.log10):
    """``fn(col)`` of variant ``a`` minus that of ``b``, paired over the seeds both ran: an Estimate, or None."""
    x, y = _per_seed(table, a, col), _per_seed(table, b, col)
    common = x.index.intersection(y.index)
    if not len(common):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return difference(fn(x[common].to_numpy()), fn(y[common].to_numpy()))


def sosd_claims(table: pd.DataFrame, steps: int) -> pd.DataFrame:
    """The SoSD claims table (:func:`~specscope.experiments.claims.claims_frame`): per claim the paper's statement,
    our number with its spread over seeds (per-seed values are means over variants where a claim spans them) and a
    verdict from :mod:`specscope.analysis.stats`. ``steps``: the run length, to state step differences as
    fractions of the run."""
    rows = []
    by_seed = table.groupby("seed")
    dist = estimate(by_seed["distance_frac"].apply(lambda d: pd.to_numeric(d, errors="coerce").mean()).to_numpy())
    rows.append(claim("SoSD onset aligns with the validation-loss knee", "aligned (GPT-2, LLaMA; Fig. 3)", dist,
                      verdict(dist, ALIGNED, side=-1),
                      ours=f"|onset - knee| = {dist.text('{:.1%}')} of the run (mean over variants; aligned: <= {ALIGNED:.0%})"))
    lead = (table["w_stable_step"] - table["sd_stable_step"]) / steps
    lead_est = estimate(lead.groupby(table["seed"]).mean().to_numpy())
    rows.append(claim("the singular distribution settles before the weights",
                      f"cos_sd_final ~1 long before cos_w_final (Fig. 1a); ours: cos >= {STABLE}", lead_est,
                      verdict(lead_est, 0.0, side=1),
                      ours=f"weights settle {lead_est.text('{:.1%}')} of the run later (mean over variants)"))
    mu = _paired(table, "muon-wsd-wd0", "adamw-wsd-wd0", "floor")
    if mu is not None:
        rows.append(claim("Muon's SD-variation floor is below AdamW's (WSD, weight decay 0)",
                          "~1e-4 vs ~1e-3: log10 ratio ~ -1 (Fig. 5b)", mu, verdict(mu, 0.0, side=-1),
                          ours=f"log10(Muon / AdamW floor) = {mu.text('{:.2f}')}"))
    st = _paired(table, "step", "adamw-wsd", "sd_drop_at_mid")
    if st is not None:
        rows.append(claim("a step decay cuts the SD variation sharply", "immediate, sharp decline at each 10x cut (Fig. 4a)",
                          st, verdict(st, 0.0, side=1),
                          ours=f"log10(drop across the cut) minus the constant-rate control's = {st.text('{:.2f}')}"))
    wd = _paired(table, "adamw-wsd", "adamw-wsd-wd0", "floor")
    if wd is not None:
        rows.append(claim("weight decay keeps the SD variation higher", "higher SoSD with WD 0.1 than without (Fig. 5a)",
                          wd, verdict(wd, 0.0, side=1), ours=f"log10(wd 0.1 / wd 0 floor) = {wd.text('{:.2f}')}"))
    on = _per_seed(table, "muon-wsd-wd0", "onset_frac")
    if len(on):
        e = estimate(on.to_numpy())
        raw = estimate(_per_seed(table, "muon-wsd-wd0", "onset_raw").to_numpy())
        rows.append(claim("SoSD persists under Muon", "SoSD persists with Muon (Sec. 5.3)", e, verdict(e, 0.5, side=1),
                          ours=f"fraction of Muon's matrices with an onset of sd_variation_lr: {e.text('{:.2f}')}; "
                               f"median onset of the raw variation at step {raw.text('{:.0f}')}"))
    return claims_frame(rows)


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(x)


def _sosd_figure(table: pd.DataFrame, steps: int):
    """The study's figure from its first seed: the LR-normalized and raw SD variation per variant (median over
    matrices; dotted: median onsets; dashed grey: the step cuts), the validation loss with its knees, and
    ``cos_sd_final`` / ``cos_w_final`` of ``adamw-wsd-wd0``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 3.8), layout="constrained")
    ax_lr, ax_raw, ax_loss, ax_cos = fig.subplots(1, 4)
    first = table[table["seed"] == table["seed"].min()].reset_index(drop=True)
    for i, row in first.iterrows():
        run = open_run(row["run_dir"])
        s = variation_series(run)
        for ax, col in ((ax_lr, "sd_variation_lr"), (ax_raw, "sd_variation")):
            med = s.groupby("step")[col].median().dropna()
            ax.semilogy(med.index, med.clip(lower=1e-12).to_numpy(), color=f"C{i}", lw=0.9, label=row["variant"])
            if _finite(row["onset_median"]):
                ax.axvline(row["onset_median"], color=f"C{i}", lw=0.7, ls=":")
        sc = run.scalars()
        if "val_loss" in sc:
            v = sc[["step", "val_loss"]].dropna()
            ax_loss.plot(v["step"], v["val_loss"], "o-", ms=2, color=f"C{i}", label=row["variant"])
        if _finite(row["knee"]):
            ax_loss.axvline(row["knee"], color=f"C{i}", lw=0.7, ls="--")
        if _finite(row["onset_median"]):
            ax_loss.axvline(row["onset_median"], color=f"C{i}", lw=0.7, ls=":")
        if row["variant"] == "adamw-wsd-wd0":
            cur = sosd_curves(run)
            for col, style in (("cos_sd_final", "--"), ("cos_w_final", "-")):
                c = cur.groupby("step")[col].median().dropna()
                ax_cos.plot(c.index, c.to_numpy(), style, color="C0", label=col)
    for cut in (0.5, 0.75):
        ax_raw.axvline(cut * steps, color="0.6", lw=0.7, ls="--")
    ax_lr.set_title("sd_variation_lr = SD variation x ||W||_* / lr; dotted: onset", fontsize=9)
    ax_raw.set_title("SD variation per step (paired); dashed: step cuts", fontsize=9)
    ax_loss.set_title("validation loss; dashed: knee, dotted: onset", fontsize=9)
    ax_cos.set_title("adamw-wsd-wd0: cos to the final spectrum (dashed) / weights", fontsize=9)
    for ax in (ax_lr, ax_raw, ax_loss, ax_cos):
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    return fig

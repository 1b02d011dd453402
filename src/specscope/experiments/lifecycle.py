"""The lifecycle study (SPEC 5.2-5.4) on the stdlib corpus, sized by SPEC 6 for a 2-core CPU: the
same GPT family at several depths, each trained once per seed of ``seeds``; per run the compression
wave of every block kind (``t50`` front, velocity with its interval), the depth profiles of the three
alpha variants, the Q/K-V/O asymmetry, layer importance vs alpha over the core blocks and the pruning
comparison (spectral rule vs Last-N vs random from the same candidates); across depths the fit
``delta_alpha ~ L^beta`` (per seed). Writes its runs, ``lifecycle.csv`` (one row per depth and seed),
``waves.csv`` (one row per run and kind), ``pruning.csv``, the claims table and a figure with one
row per kind.

Default size: depths 4 / 6 / 8 (three points for the fit ``delta_alpha ~ L^beta``), width 64, 4 heads,
64-token sequences, 300 steps of 8 sequences, warmup 30; the weight probe every step through warmup,
log-spaced (10 per decade) and every 25 steps after (the wave passes in the first few percent); pruning
on 32 held-out sequences with 20 random draws. Runtime: depths 4 / 6 at 100 steps took 1.3 minutes
for ``--seeds 3`` on the 2-core machine; this default is sized for about 7 minutes (README: measured).
``--steps N`` shortens every run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.lifecycle import (ALPHA_VARIANTS, PAPER_ALPHA_RANGE, SV_ALPHA, depth_scaling, final_metric,
                                  profile_variants)
from ..analysis.pruning import importance_verdict
from ..analysis.stats import Estimate, estimate, interval, verdict, within
from ..analysis.waves import compression_waves
from ..probes import Schedule, at, every, log_spaced, make_pool
from ..store.artifacts import save_artifact
from ..store.reader import open_run
from .claims import claim, claims_frame
from .common import CorpusStudy, ExperimentResult

log = logging.getLogger(__name__)

WAVE_KINDS = ("q", "k")  # the claims read W_Q (the paper's) and W_K
BETA_BAND = (0.1, 0.5)  # delta_alpha ~ L^beta: the paper's 0.26, within a factor of about 2


@dataclass
class LifecycleExperiment(CorpusStudy):
    """The lifecycle study: one model per depth in ``depths`` and seed in ``seeds``; the weight probe every
    ``early_every`` steps through warmup, ``per_decade`` log-spaced steps per decade and every ``probe_every``;
    ``metric`` ranks the blocks for importance and pruning, scored on ``prune_sequences`` held-out sequences
    against ``random_seeds`` random draws."""

    depths: tuple[int, ...] = (4, 6, 8)
    d_model: int = 64
    seq_len: int = 64
    steps: int = 300
    micro_batch: int = 8
    warmup: int = 30
    early_every: int = 1
    per_decade: int = 10
    metric: str = SV_ALPHA
    prune_sequences: int = 32
    random_seeds: int = 20

    @classmethod
    def quick(cls) -> "LifecycleExperiment":
        """A seconds-long configuration for tests: depths 3 and 4, width 32, 40 steps."""
        return cls(depths=(3, 4), d_model=32, n_head=2, seq_len=32, steps=40, micro_batch=4, warmup=6, probe_every=10,
                   prune_sequences=8, max_corpus_mb=2.0)

    def probe_schedule(self) -> Schedule:
        """When the weight probe measures: every ``early_every`` steps through warmup, ``per_decade`` log-spaced
        steps per decade up to ``steps`` and every ``probe_every`` steps (their union)."""
        return (at(range(0, self.warmup + 1, max(1, self.early_every))) | log_spaced(1, max(1, self.steps), self.per_decade)
                | every(self.probe_every))


def _wave_cols(wave: dict) -> dict:
    out = {"wave_direction": wave.get("direction"), "velocity": wave.get("velocity"),
           "gradient_reversal_step": wave.get("reversal_step")}
    for kind in WAVE_KINDS:
        v = wave.get("by_kind", {}).get(kind, {})
        out.update({f"wave_{kind}_direction": v.get("direction"), f"wave_{kind}_velocity": v.get("velocity", np.nan),
                    f"wave_{kind}_slope": v.get("front_slope", np.nan),
                    f"wave_{kind}_slope_lo": v.get("front_slope_ci_lower", np.nan),
                    f"wave_{kind}_slope_hi": v.get("front_slope_ci_upper", np.nan)})
    return out


def _wave_rows(wave: dict, depth: int, seed: int) -> list[dict]:
    keys = ("direction", "velocity", "velocity_ci_lower", "velocity_ci_upper", "front_slope", "front_slope_ci_lower",
            "front_slope_ci_upper", "reversal_step", "layers", "t50")
    kinds = {**wave.get("by_kind", {}), "pooled": wave}
    return [{"depth": depth, "seed": seed, "kind": k, **{x: v.get(x) for x in keys}} for k, v in kinds.items() if "direction" in v]


def _profile_cols(variants: dict) -> dict:
    out = {}
    for m, v in variants.items():
        out.update({f"{m}_shape": v.get("shape"), f"{m}_curvature": v.get("curvature"),
                    f"{m}_curvature_lo": v.get("curvature_ci_lower"), f"{m}_curvature_hi": v.get("curvature_ci_upper"),
                    f"{m}_peak_layer": v.get("peak_layer"), f"{m}_median": v.get("median")})
    sv = variants[SV_ALPHA]
    return {**out, "qk_vo_asymmetry": sv.get("qk_vo_asymmetry"), "delta_alpha": sv.get("delta_alpha")}


def _block_alpha(run, metric: str) -> pd.Series:
    fm = final_metric(run, metric)
    return fm.groupby("layer")[metric].mean() if not fm.empty else pd.Series(dtype=float)


def _study_run(cfg: LifecycleExperiment, corpus, pool, depth: int, seed: int, out: Path, progress: bool):
    """Train and measure one (depth, seed): ``(row, wave_rows, pruning_summary, run)``."""
    from ..train.load import load_model
    from .pruning import pruning_study, summarize_comparison

    res = cfg.train_run(corpus, depth, out / f"L{depth}-s{seed}", f"lifecycle-L{depth}-s{seed}", evals=10,
                        progress=progress, seed=seed, probe_schedule=cfg.probe_schedule())
    run = open_run(res.run_dir)
    _, wave = compression_waves(run)
    variants = profile_variants(run)
    model, _ = load_model(str(res.run_dir))
    alpha = _block_alpha(run, cfg.metric)
    importance, comparison, pv = pruning_study(model, pool, metric=cfg.metric, random_seeds=cfg.random_seeds, alpha=alpha)
    summ = summarize_comparison(comparison)
    save_artifact(res.run_dir, "pruning", {"importance": importance, "summary": summ}, pv)
    mle = importance[["layer", "delta_loss"]].merge(_block_alpha(run, "alpha_mle").rename("alpha_mle").rename_axis("layer")
                                                    .reset_index(), on="layer", how="left")
    iv_mle = importance_verdict(mle, "alpha_mle")
    row = {"depth": depth, "seed": seed, **_wave_cols(wave), **_profile_cols(variants),
           "rho_core": pv.get("rho_core"), "p_core": pv.get("p_core"), "rho_all": pv.get("rho"),
           "direction_check": pv.get("direction_check"), "rho_core_alpha_mle": iv_mle["rho_core"],
           "direction_check_alpha_mle": iv_mle["direction_check"], "prune_k": pv.get("k"),
           "dppl_spectral": pv.get("delta_ppl_spectral"), "dppl_last_n": pv.get("delta_ppl_last_n"),
           "dppl_random": pv.get("delta_ppl_random"), "last_n_over_spectral": pv.get("last_n_over_spectral"),
           "final_val_loss": res.final_val_loss, "run_dir": str(res.run_dir)}
    return row, _wave_rows(wave, depth, seed), summ.assign(depth=depth, seed=seed), run


def run_lifecycle(cfg: LifecycleExperiment, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    """Train one model per depth and seed under ``out_dir/L<depth>-s<seed>`` and return the study's table (one row
    per depth and seed), claims (the paper's numbers beside ours, mean and spread over seeds, verdicts) and figure;
    also written as ``lifecycle.csv``, ``waves.csv``, ``pruning.csv``, ``lifecycle_claims.csv`` and ``lifecycle.png``.
    ``extra``: ``seeds``, ``scaling`` (per seed: :func:`depth_scaling`'s verdict), ``waves`` and ``pruning``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = cfg.corpus()
    pool = make_pool(corpus.probe, n=cfg.prune_sequences, seq_len=cfg.seq_len, seed=1)
    rows, waves, prunes, scaling = [], [], [], {}
    for seed in cfg.seeds:
        runs = []
        for depth in cfg.depths:
            row, wrows, summ, run = _study_run(cfg, corpus, pool, depth, seed, out, progress)
            rows.append(row)
            waves += wrows
            prunes.append(summ)
            runs.append(run)
        scaling[seed] = depth_scaling(runs, SV_ALPHA)[1]
    table = pd.DataFrame(rows)
    table.to_csv(out / "lifecycle.csv", index=False)
    wave_table = pd.DataFrame(waves)
    wave_table.to_csv(out / "waves.csv", index=False)
    pruning = pd.concat(prunes, ignore_index=True) if prunes else pd.DataFrame()
    pruning.to_csv(out / "pruning.csv", index=False)
    claims = lifecycle_claims(table, scaling)
    claims.to_csv(out / "lifecycle_claims.csv", index=False)
    from .lifecycle_figure import lifecycle_figure

    fig = out / "lifecycle.png"
    lifecycle_figure(table, wave_table, pruning, cfg.metric).savefig(fig, dpi=100)
    return ExperimentResult(table, claims, out, fig, {"seeds": len(cfg.seeds), "scaling": scaling, "waves": wave_table,
                                                      "pruning": pruning})


def over_seeds(values, lo=np.nan, hi=np.nan) -> Estimate:
    """Mean and Student-t interval over seeds of ``values`` (one per seed); with a single value, that run's own
    interval ``[lo, hi]`` (a fit's) instead: an :class:`~specscope.analysis.stats.Estimate`."""
    v = [x for x in pd.to_numeric(pd.Series(list(values)), errors="coerce") if np.isfinite(x)]
    if len(v) == 1:
        lo_, hi_ = (float(np.asarray(lo).ravel()[0]), float(np.asarray(hi).ravel()[0])) if np.size(lo) else (np.nan, np.nan)
        return interval(v[0], lo_, hi_, n=1)
    return estimate(v)


def _wave_claim(d: pd.DataFrame, kind: str) -> dict:
    """Direction and velocity of the ``kind`` wave at one depth: the verdict on the t50 slope (steps per layer)
    over seeds, the velocity = 1 / slope with the interval mapped through it."""
    col = f"wave_{kind}_slope"
    if col not in d or d[col].notna().sum() == 0:
        return claim(f"compression wave of W_{kind.upper()} moves early -> late", "early -> late, then reverses",
                     None, "not significant", ours="no wave front measured")
    b = over_seeds(d[col], d[f"{col}_lo"], d[f"{col}_hi"])
    sig = b.has_interval and (b.lo > 0 or b.hi < 0)
    vel = interval(1 / b.mean if b.mean else np.nan, *(sorted((1 / b.lo, 1 / b.hi)) if sig else (np.nan, np.nan)), n=b.n)
    dirs = ", ".join(str(x) for x in d[f"wave_{kind}_direction"])
    rev = int(d["gradient_reversal_step"].notna().sum())
    ours = (f"velocity {vel.text('{:.3g}', 'layers/step')} (t50 slope {b.text('{:.3g}', 'steps/layer')}); per seed: {dirs}; "
            f"gradient reversal in {rev}/{len(d)}")
    return claim(f"compression wave of W_{kind.upper()} moves early -> late (velocity, layers/step)",
                 "early -> late, then reverses; velocity grows with depth (Fig. 22d)", vel, verdict(b, 0, +1), ours=ours)


def _inverted_u_claim(d: pd.DataFrame, metric: str) -> dict:
    """Inverted U of the W_Q profile of ``metric`` at the deepest depth: reproduced when the curvature is
    significantly negative over seeds and most seeds' peak is interior (shape inverted U or a significant negative
    curvature with an interior peak); not reproduced when it is significantly positive or no seed has an interior
    peak."""
    curv = over_seeds(d[f"{metric}_curvature"], d[f"{metric}_curvature_lo"], d[f"{metric}_curvature_hi"])
    shapes = [str(s) for s in d[f"{metric}_shape"]]
    v = verdict(curv, 0, -1)
    if v == "reproduced" and sum(s == "inverted U" for s in shapes) * 2 <= len(shapes):
        v = "not significant"  # negative curvature, but the peak is at an end in most seeds
    ours = f"curvature {curv.text('{:.3g}')}; shapes: {', '.join(shapes)}"
    return claim(f"{metric}: W_Q alpha forms an inverted U across depth (deepest model)",
                 "inverted U (D12: peak at layer 4; D16)", curv, v, ours=ours)


def lifecycle_claims(table: pd.DataFrame, scaling: dict) -> pd.DataFrame:
    """The lifecycle claims table (:func:`~specscope.experiments.claims.claims_frame`): per claim the paper's number,
    ours with its mean and spread over the seeds of ``table`` (one row per depth and seed; the per-model claims
    read the deepest depth) and a verdict from :mod:`specscope.analysis.stats`; ``scaling`` maps seed ->
    :func:`depth_scaling`'s verdict."""
    if table.empty:
        return claims_frame([])
    d = table[table["depth"] == table["depth"].max()]
    rows = [_wave_claim(d, k) for k in WAVE_KINDS]
    rows += [_inverted_u_claim(d, m) for m in ALPHA_VARIANTS]
    lo, hi = PAPER_ALPHA_RANGE
    for m in ALPHA_VARIANTS:
        est = estimate(table[f"{m}_median"])
        rows.append(claim(f"{m}: values in the paper's Weighted Alpha range", f"{lo}-{hi}", est, within(est, lo, hi),
                          ours=f"median over layers {est.text('{:.3g}', of='runs')}"))
    asym = estimate(d["qk_vo_asymmetry"])
    rows.append(claim("Q/K carry the depth dependence of alpha, V/O are uniform (Q/K range / V/O range)",
                      "Q/K range >> V/O range", asym, verdict(asym, 1, +1), fmt="{:.2f}x"))
    beta = estimate([v.get("beta") for v in scaling.values()])
    r2 = [v.get("r2") for v in scaling.values() if v.get("r2") is not None and np.isfinite(v.get("r2"))]
    rows.append(claim("delta_alpha ~ L^beta across depths (alpha_sv)", "beta = 0.26, R^2 = 0.99", beta,
                      within(beta, *BETA_BAND), ours=f"beta {beta.text('{:.2f}')}" + (f"; R^2 {np.mean(r2):.2f}" if r2 else "")
                      + f"; {table['depth'].nunique()} depths"))
    rho = over_seeds(d["rho_core"])
    checks = ", ".join(str(x) for x in d["direction_check"])
    rows.append(claim("alpha predicts layer importance over core layers (Spearman rho)", "rho = 0.69-0.84, p < 0.02", rho,
                      verdict(rho, 0, +1), ours=f"rho {rho.text('{:.2f}')}; direction check per seed: {checks}"))
    ratio = over_seeds(d["last_n_over_spectral"])
    rows.append(claim("spectral pruning beats Last-N (Last-N / spectral delta-perplexity)", "1.1x-3.6x", ratio,
                      verdict(ratio, 1, +1), fmt="{:.2f}x"))
    return claims_frame(rows)

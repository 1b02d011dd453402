"""``specscope experiment lens`` (SPEC 5.6, Spectral Lens section 3 at our scale): one family of
runs that differ only in batch size, per seed, trained to one token budget with the activation
probe at common token counts, and the early forecast of their token efficiency.

Two families:

- ``toy`` (the default): the paper's cyclic-shift batch sweep (Fig. 4a), 2 layers, 4 heads,
  width 128, ``B in {32, 64, 128, 256, 512}``, tail window ``[10, 40]``
  (:mod:`specscope.experiments.lens_toy`, which documents its size and runtime).
- ``stdlib``: the reference GPT on the stdlib corpus across batch tiers
  (:class:`LensExperiment`). Learning rates: by default each tier trains once at the
  square-root rule's rate ``lr0 * sqrt(B / B0)``; with ``sweep=True`` each tier's rate is chosen
  by successive halving (:func:`~specscope.experiments.sweep.run_sweep`), and the tier's winner is
  the run analysed. The runs are sweep trials (``OUT/seed<s>/trials/<name>``), resumable. Default
  size: 5 tiers x 2M tokens a seed, far past the 8-minute target on a 2-core CPU at 3 seeds.

Per seed (:func:`family_analysis`): tokens to target ``T(B)`` (a run that never reaches a given
target is censored), ``eps_tok``, the early tail exponent at 20% of the median ``T`` over the tail
window (chosen by width unless the family fixes it) and over every bank window, Spearman rho
within the family, and rho as a function of the early budget (Fig. 8). The target, unless given,
is the loosest loss every run of the seed reached. The claims (:func:`lens_claims`): rho > 0 and
the best batch predicted, mean and spread over seeds, beside the paper's numbers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.lens import lens_summary
from ..analysis.stats import estimate, verdict
from ..store.reader import Run, is_run_dir, open_run
from .claims import claim, claims_frame
from .common import ExperimentResult
from .halving import MULTIPLIERS
from .lens_toy import ToyLensConfig, toy_family
from .sweep import BudgetedRuns, SweepConfig, run_sweep, run_trial, sweep_winners, trial_dir

# The paper's early-prediction numbers (Spectral Lens): Fig. 4a for the toy sweep, Fig. 2a for the LM families.
PAPER_RHO = {"toy": "rho = 1 (perfect) from ~20% of training (Fig. 4a, window 10:40)",
             "stdlib": "0.97 (mean within-family rho, d12 LM families, Fig. 2a)"}


@dataclass
class LensExperiment(BudgetedRuns):
    """The stdlib family's settings: the :class:`BudgetedRuns` fields plus the ``batches`` tiers (sequences per step),
    the learning-rate rule's ``ref_batch`` and ``ref_lr``, ``budget_frac`` (early budget as a fraction of the median
    ``T``), ``window`` (tail window, 1-based ranks; None: chosen by width), ``sweep`` with its ``rung_fracs``
    (fractions of ``tokens``), ``multipliers`` and ``executor``."""

    batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    ref_batch: int = 8
    ref_lr: float = 3e-3
    budget_frac: float = 0.2
    window: tuple[int, int] | None = None
    sweep: bool = False  # choose each tier's learning rate by successive halving
    rung_fracs: tuple[float, ...] = (0.1, 0.3, 1.0)  # sweep rungs as fractions of `tokens`
    multipliers: tuple[float, ...] = MULTIPLIERS
    executor: str = "ray"  # sweep executor: "ray" (local Ray) | "local" (this process)

    @classmethod
    def quick(cls) -> "LensExperiment":
        """A seconds-long configuration (three tiers, a tiny GPT, 12,000 tokens a run) for tests and smoke runs."""
        return cls(batches=(1, 2, 4), ref_batch=2, micro_batch=4, tokens=12_000, **cls.QUICK)

    def sweep_config(self, seed: int | None = None) -> SweepConfig:
        """The :class:`SweepConfig` of these runs for ``seed`` (default ``self.seed``): every tier, rungs at
        ``rung_fracs`` of ``tokens`` when swept, else one rung at the full budget."""
        rungs = sorted({round(f * self.tokens) for f in self.rung_fracs} | {self.tokens}) if self.sweep else [self.tokens]
        return self.trial_config(name="lens", batches=list(self.batches), ref_batch=self.ref_batch, ref_lr=self.ref_lr,
                                 rungs=rungs, multipliers=list(self.multipliers),
                                 train={"seed": self.seed if seed is None else seed})


def _tier_runs(cfg: LensExperiment, out: Path, progress: bool, seed: int) -> tuple[list[Run], pd.DataFrame]:
    """One trained run per tier of the stdlib family for ``seed`` under ``out`` (and the sweep table when swept)."""
    scfg = cfg.sweep_config(seed)
    if cfg.sweep:
        table = run_sweep(scfg, out, executor=cfg.executor, progress=progress)
        dirs = sweep_winners(out)
    else:
        dirs, table = [], pd.DataFrame()
        for b in cfg.batches:
            cand = {"name": f"B{b}", "batch": b, "lr": cfg.ref_lr * math.sqrt(b / cfg.ref_batch)}
            run_trial(asdict(scfg), cand, cfg.tokens, str(out), progress)
            dirs.append(trial_dir(out, cand["name"]))
    return [open_run(d) for d in dirs if is_run_dir(d)], table


def family_analysis(runs: list[Run], target: float | None, budget_frac: float,
                    window: tuple[int, int] | None) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """One family's forecast: :func:`~specscope.analysis.lens.lens_summary` with each run's ``lr`` added to the table
    (sorted by batch), its verdict with ``best_predicted`` (1.0 when the predicted best batch has the least ``T``, 0.0
    when not, NaN when either is unknown), and the rho-vs-budget table."""
    table, v, curve = lens_summary(runs, target, budget_frac, window)
    lr = {r.run_id: float(r.config.get("train", {}).get("lr", float("nan"))) for r in runs}
    table = table.assign(lr=table["run"].map(lr)).sort_values("batch").reset_index(drop=True)
    pred, best = v["predicted_best_batch"], v["best_batch"]
    hits = [float(pred[f] == best[f]) for f in best if f in pred and best[f] is not None]
    return table, {**v, "best_predicted": float(np.mean(hits)) if hits else float("nan")}, curve


def lens_claims(verdicts: dict[int, dict], family: str) -> pd.DataFrame:
    """The study's claims table from its per-seed verdicts (seed -> :func:`family_analysis` verdict): Spearman rho of
    the early tail exponent vs ``eps_tok`` at the chosen window (> 0), the predicted best batch being the most
    token-efficient one (fraction of seeds > 0.5), and rho at every bank window (> 0), each as mean ± spread over
    seeds beside the paper's number (:data:`PAPER_RHO`)."""
    vs = list(verdicts.values())
    win = next((v["window"] for v in vs if v["window"]), "n/a")
    censored = sum(v["censored"] for v in vs)
    rho = estimate([v["rho_within_family"] for v in vs])
    per_seed = ", ".join(f"seed {s}: {_fmt(v['rho_within_family'])}" for s, v in verdicts.items())
    note = f" ({censored} censored run(s) left out)" if censored else ""
    rows = [claim(f"early alpha_tail (window {win}) predicts token efficiency: Spearman rho > 0", PAPER_RHO[family], rho,
                  verdict(rho, 0.0, +1), ours=f"{rho.text('{:.2f}')}; {per_seed}{note}" if rho.n else "n/a")]
    best = estimate([v["best_predicted"] for v in vs])
    rows.append(claim("the flattest early tail is the most token-efficient batch (fraction of seeds)",
                      "yes (a perfect rank correlation orders every tier)", best, verdict(best, 0.5, +1), fmt="{:.2f}"))
    for w in dict.fromkeys(k for v in vs for k in v["rho_by_window"]):
        est = estimate([v["rho_by_window"].get(w) for v in vs])
        rows.append(claim(f"rho > 0 over bank window {w}", "Fig. 8: every window positive once trained, deepest first (d12)",
                          est, verdict(est, 0.0, +1), fmt="{:.2f}"))
    return claims_frame(rows)


def _fmt(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"


def run_lens(cfg: LensExperiment | ToyLensConfig, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    """Train (or resume) one family per seed of ``cfg`` (a :class:`~specscope.experiments.lens_toy.ToyLensConfig`:
    the toy sweep; a :class:`LensExperiment`: the stdlib family) under ``out_dir`` and forecast each.

    Returns an :class:`ExperimentResult` whose table is :func:`family_analysis`'s per seed and batch (column
    ``seed``), also written as ``lens.csv`` (with ``rho_vs_budget.csv`` and the figure ``lens.png`` of the first
    seed), whose ``claims`` are :func:`lens_claims`; ``extra`` holds ``family``, ``verdicts`` (seed -> verdict),
    ``verdict``, ``runs`` and ``target`` (the first seed's), ``rho_vs_budget`` (all seeds), ``sweep`` (the halving
    tables, empty unless swept) and ``seeds``. RuntimeError when fewer than two runs of a seed trained."""
    from ..report.lens_figures import lens_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    toy = isinstance(cfg, ToyLensConfig)
    tables, curves, sweeps, verdicts, first = [], [], [], {}, None
    for s in cfg.seeds:
        if toy:
            runs, sweep = toy_family(cfg, s, out, progress), pd.DataFrame()
        else:
            runs, sweep = _tier_runs(cfg, out / f"seed{s}", progress, s)
        if len(runs) < 2:
            raise RuntimeError(f"seed {s}: only {len(runs)} run(s) trained; see the warnings above")
        table, v, curve = family_analysis(runs, cfg.target, cfg.budget_frac, cfg.window)
        tables.append(table.assign(seed=s))
        curves.append(curve.assign(seed=s))
        sweeps.append(sweep.assign(seed=s) if len(sweep) else sweep)
        verdicts[s] = v
        first = first or (runs, curve, v)
    table = pd.concat(tables, ignore_index=True)
    table = table[["seed", *[c for c in table.columns if c != "seed"]]]
    curve = pd.concat(curves, ignore_index=True)
    table.to_csv(out / "lens.csv", index=False)
    curve.to_csv(out / "rho_vs_budget.csv", index=False)
    fig = out / "lens.png"
    runs, curve0, v0 = first
    lens_figure(runs, curve0, v0["target"]).savefig(fig, dpi=110)
    family = "toy" if toy else "stdlib"
    return ExperimentResult(table, lens_claims(verdicts, family), out, fig,
                            {"family": family, "verdicts": verdicts, "verdict": v0, "runs": runs, "target": v0["target"],
                             "rho_vs_budget": curve, "sweep": pd.concat(sweeps, ignore_index=True), "seeds": len(cfg.seeds)})

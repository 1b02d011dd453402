"""``specscope experiment lens`` (SPEC 5.6, Spectral Lens section 3 at our scale): one family (the
reference GPT on the stdlib corpus) across batch tiers, trained to the same token budget with the
activation and gradient probes at common token counts.

Learning rates: by default each tier trains once at the square-root rule's rate ``lr0 *
sqrt(B / B0)`` (the center of the sweep's candidates); with ``sweep=True`` each tier's rate is
chosen by the sweep itself (:func:`~specscope.experiments.sweep.run_sweep`: the rule's candidates,
synchronized successive halving over rungs that end at the full budget), and the tier's winner is
the run analysed. Either way the runs are sweep trials (``OUT/trials/<name>``), resumable.

Per tier: tokens to target ``T(B)``, ``eps_tok``, throughput, and the early ``alpha_tail`` of the
deepest activation spectrum at 20% of the median ``T``; Spearman rho within the family; rho as a
function of the early budget (the paper's Fig. 8); the activation spectra at matched loss (Fig. 1a).
The target, unless given, is the loosest loss every tier reached.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..analysis.lens import common_target, lens_summary
from ..store.reader import is_run_dir, open_run
from .common import ExperimentResult
from .halving import MULTIPLIERS
from .sweep import BudgetedRuns, SweepConfig, run_sweep, run_trial, sweep_winners, trial_dir


@dataclass
class LensExperiment(BudgetedRuns):
    """The lens study's settings: the :class:`BudgetedRuns` fields plus the ``batches`` tiers (sequences per step),
    the learning-rate rule's ``ref_batch`` and ``ref_lr``, ``budget_frac`` (early budget as a fraction of the median
    ``T``), ``sweep`` with its ``rung_fracs`` (fractions of ``tokens``), ``multipliers`` and ``executor``."""

    batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    ref_batch: int = 8
    ref_lr: float = 3e-3
    budget_frac: float = 0.2
    sweep: bool = False  # choose each tier's learning rate by successive halving
    rung_fracs: tuple[float, ...] = (0.1, 0.3, 1.0)  # sweep rungs as fractions of `tokens`
    multipliers: tuple[float, ...] = MULTIPLIERS
    executor: str = "ray"  # sweep executor: "ray" (local Ray) | "local" (this process)

    @classmethod
    def quick(cls) -> "LensExperiment":
        """A seconds-long configuration (three tiers, a tiny GPT, 12,000 tokens a run) for tests and smoke runs."""
        return cls(batches=(1, 2, 4), ref_batch=2, micro_batch=4, tokens=12_000, **cls.QUICK)

    def sweep_config(self) -> SweepConfig:
        """The :class:`SweepConfig` of these runs: every tier, rungs at ``rung_fracs`` of ``tokens`` when swept, else
        one rung at the full budget."""
        rungs = sorted({round(f * self.tokens) for f in self.rung_fracs} | {self.tokens}) if self.sweep else [self.tokens]
        return self.trial_config(name="lens", batches=list(self.batches), ref_batch=self.ref_batch, ref_lr=self.ref_lr,
                                 rungs=rungs, multipliers=list(self.multipliers))


def _tier_runs(cfg: LensExperiment, out: Path, progress: bool) -> tuple[list[Path], pd.DataFrame]:
    """Run directories of one trained run per tier (and the sweep table when swept)."""
    scfg = cfg.sweep_config()
    if cfg.sweep:
        table = run_sweep(scfg, out, executor=cfg.executor, progress=progress)
        return sweep_winners(out), table
    dirs = []
    for b in cfg.batches:
        cand = {"name": f"B{b}", "batch": b, "lr": cfg.ref_lr * math.sqrt(b / cfg.ref_batch)}
        run_trial(asdict(scfg), cand, cfg.tokens, str(out), progress)
        dirs.append(trial_dir(out, cand["name"]))
    return dirs, pd.DataFrame()


def run_lens(cfg: LensExperiment, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    """Train (or resume) one run per tier under ``out_dir`` and forecast: an :class:`ExperimentResult` whose table is
    :func:`~specscope.analysis.lens.forecast`'s per tier with ``lr``, also written as ``lens.csv`` (with
    ``rho_vs_budget.csv`` and the figure ``lens.png``); ``extra`` holds ``verdict``, ``rho_vs_budget``, ``sweep``
    (the halving table, empty unless swept), ``runs`` and ``target`` (loss). RuntimeError when fewer than two tiers
    trained."""
    from ..report.lens_figures import lens_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs, sweep_table = _tier_runs(cfg, out, progress)
    runs = [open_run(d) for d in dirs if is_run_dir(d)]
    if len(runs) < 2:
        raise RuntimeError(f"only {len(runs)} tier(s) trained; see the warnings above")
    target = cfg.target if cfg.target is not None else common_target(runs)
    table, verdict, curve = lens_summary(runs, target, cfg.budget_frac)
    lr = {r.run_id: float(r.config.get("train", {}).get("lr", float("nan"))) for r in runs}
    table = table.assign(lr=table["run"].map(lr)).sort_values("batch")
    table.to_csv(out / "lens.csv", index=False)
    curve.to_csv(out / "rho_vs_budget.csv", index=False)
    fig = out / "lens.png"
    lens_figure(runs, curve, target).savefig(fig, dpi=110)
    return ExperimentResult(table, pd.DataFrame(), out, fig, {"verdict": verdict, "rho_vs_budget": curve, "sweep": sweep_table,
                                                            "runs": runs, "target": target})

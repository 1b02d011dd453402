"""``specscope experiment taxonomy`` (SPEC 5.7, Spectral Lens section 4 at our scale): a cumulative
chain of interventions on the reference GPT at one matched batch size (default: baseline -> RoPE
-> Muon -> untied head, the paper's variants 1-4), each trained to the same token budget with the
activation and gradient probes at common token counts; then per transition the token gain, the
throughput gain, the displacement of the activation ``alpha_head`` and of the gradient spectrum at
matched loss, and the label. Unless a target is given, each transition is compared at the
loosest loss both of its runs reached; the per-stage table and the figure use the loosest loss
every stage reached.

Every stage keeps its predecessors' switches (as in the paper). Stages: ``rope`` (rotary
positions), ``muon`` (Muon on the hidden matrices, AdamW on the rest), ``untied`` (separate LM
head), ``qknorm``, ``softcap`` (logit soft-cap 15), ``relu2`` (squared-ReLU MLP). Learning rates
are held fixed along the chain (AdamW ``lr``; Muon's own ``muon_lr``), not swept.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..analysis.lens import chain_stages, common_target, taxonomy
from ..errors import ConfigError
from ..store.reader import is_run_dir, open_run
from .common import ExperimentResult
from .sweep import BudgetedRuns, SweepConfig, run_trial, trial_dir

# stage -> (GPTConfig switches, TrainConfig switches)
STAGES: dict[str, tuple[dict, dict]] = {
    "baseline": ({}, {}),
    "rope": ({"positions": "rope"}, {}),
    "muon": ({}, {"optimizer": "muon"}),
    "untied": ({"tied": False}, {}),
    "qknorm": ({"qk_norm": True}, {}),
    "softcap": ({"softcap": 15.0}, {}),
    "relu2": ({"activation": "relu2"}, {}),
}

# What the paper says about the default chain's transitions (section 4 and appendix F).
PAPER_LABELS = {
    "baseline -> rope": ("activation-led", "section 4 lists RoPE among the activation-led interventions"),
    "rope -> muon": (None, "not labeled in the text; appendix F calls Muon an optimization-geometry change with smaller "
                           "feature-concentration effects"),
    "muon -> untied": ("activation-led", "section 4's example of activation-led learning"),
}


@dataclass
class TaxonomyExperiment(BudgetedRuns):
    """The taxonomy study's settings: the :class:`BudgetedRuns` fields plus the ``chain`` of stages (keys of
    ``STAGES``, baseline first), the matched ``batch`` (sequences per step), ``micro_batch`` and the fixed AdamW
    ``lr``."""

    chain: tuple[str, ...] = ("baseline", "rope", "muon", "untied")
    batch: int = 8
    micro_batch: int = 8
    lr: float = 3e-3

    @classmethod
    def quick(cls) -> "TaxonomyExperiment":
        """A seconds-long configuration (batch 2, a tiny GPT, 8,000 tokens a stage) for tests and smoke runs."""
        return cls(batch=2, micro_batch=2, tokens=8_000, **cls.QUICK)

    def check(self) -> None:
        """Raise :class:`ConfigError` for unknown stages or a chain of fewer than two distinct stages; None when
        sound."""
        unknown = [s for s in self.chain if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stages {unknown}; choose from {sorted(STAGES)}")
        if len(self.chain) < 2 or len(set(self.chain)) != len(self.chain):
            raise ConfigError("the chain needs at least two distinct stages")

    def stage_configs(self) -> list[tuple[str, SweepConfig]]:
        """One single-trial sweep config per stage, each carrying its predecessors' switches."""
        model, train, out = {}, {}, []
        for stage in self.chain:
            m, t = STAGES[stage]
            model, train = {**model, **m}, {**train, **t}
            out.append((stage, self.trial_config(model, train, name=f"taxonomy-{stage}", batches=[self.batch],
                                                 ref_batch=self.batch, ref_lr=self.lr)))
        return out


def _agree(paper: str | None, ours: str) -> str:
    return "-" if paper is None else ("yes" if paper == ours else "no")


def claims(table: pd.DataFrame) -> pd.DataFrame:
    """Our label and spectral lean beside the paper's label for the same transition: a DataFrame with columns
    ``transition``, ``paper`` (``-`` when the paper gives none), ``ours``, ``label_agrees``, ``spectral_lean``,
    ``lean_agrees`` (``yes``, ``no`` or ``-``) and ``source``."""
    rows = []
    for r in table.itertuples():
        paper, why = PAPER_LABELS.get(r.transition, (None, "not in the paper's chain"))
        rows.append({"transition": r.transition, "paper": paper or "-", "ours": r.label, "label_agrees": _agree(paper, r.label),
                     "spectral_lean": r.spectral_lean, "lean_agrees": _agree(paper, f"{r.spectral_lean}-led"), "source": why})
    return pd.DataFrame(rows)


def run_taxonomy(cfg: TaxonomyExperiment, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    """Train (or resume) one run per stage of the chain under ``out_dir`` and label the transitions: an
    :class:`ExperimentResult` whose table is :func:`~specscope.analysis.lens.taxonomy`'s (also ``taxonomy.csv``),
    claims from :func:`claims`, figure ``taxonomy.png``; ``extra`` holds ``target`` (the given loss or None),
    ``chain_target`` (the loosest loss every stage reached), ``stages`` (``stages.csv``) and ``runs``. RuntimeError
    when a stage did not train."""
    from ..report.lens_figures import taxonomy_figure

    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stage, scfg in cfg.stage_configs():
        run_trial(asdict(scfg), {"name": stage, "batch": cfg.batch, "lr": cfg.lr}, cfg.tokens, str(out), progress)
    dirs = [trial_dir(out, s) for s in cfg.chain]
    missing = [d.name for d in dirs if not is_run_dir(d)]
    if missing:
        raise RuntimeError(f"stages {missing} did not train; see the warnings above")
    chain = [open_run(d) for d in dirs]
    target = cfg.target if cfg.target is not None else common_target(chain)
    table = taxonomy(chain, cfg.target, names=list(cfg.chain))  # no target given: each pair at the loosest loss both reached
    table.to_csv(out / "taxonomy.csv", index=False)
    stages = chain_stages(chain, target, cfg.chain)
    stages.to_csv(out / "stages.csv", index=False)
    fig = out / "taxonomy.png"
    taxonomy_figure(chain, list(cfg.chain), table, target).savefig(fig, dpi=110)
    return ExperimentResult(table, claims(table), out, fig, {"target": cfg.target, "chain_target": target, "stages": stages,
                                                            "runs": chain})

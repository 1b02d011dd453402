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

Seeds: the whole chain is trained once per seed of ``cfg.seeds``; each transition's gains are
reported per seed and as mean ± sd over seeds, and labeled from the means with the gains' noise
over seeds (:func:`~specscope.analysis.lens.taxonomy_over_seeds`; one seed: the fixed thresholds
of :class:`~specscope.analysis.lens.TaxonomyRule`). The claims table puts the paper's label
beside ours, and the token gain > 0 with its spread and a verdict, for the transitions the paper
speaks of.

Default size: 4 stages x 250,000 tokens of a 2-block, width-64 GPT; one stage takes about 25 s
of one core, so ``specscope experiment taxonomy --seeds 3`` (12 runs) takes about 5-6 minutes on an
idle 2-core machine (measured as CPU time of one thread under load; wall time grows with load).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..analysis.lens import chain_stages, common_target, taxonomy, taxonomy_over_seeds
from ..analysis.stats import estimate, verdict
from ..errors import ConfigError
from ..store.reader import is_run_dir, open_run
from .claims import claim, claims_frame
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
    ``lr``. Defaults sized for a 2-core CPU (module docstring): 2 blocks of width 64, 64-token sequences, 250,000
    tokens a stage (489 steps of 8 sequences), evaluated and probed every 12,500 tokens."""

    chain: tuple[str, ...] = ("baseline", "rope", "muon", "untied")
    batch: int = 8
    micro_batch: int = 8
    lr: float = 3e-3
    n_layer: int = 2
    d_model: int = 64
    seq_len: int = 64
    tokens: int = 250_000
    eval_tokens: int = 12_500
    pool_size: int = 32

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

    def stage_configs(self, seed: int | None = None) -> list[tuple[str, SweepConfig]]:
        """One single-trial sweep config per stage, each carrying its predecessors' switches, trained with ``seed``
        (default ``self.seed``): a list of ``(stage, config)``."""
        model, train, out = {}, {"seed": self.seed if seed is None else seed}, []
        for stage in self.chain:
            m, t = STAGES[stage]
            model, train = {**model, **m}, {**train, **t}
            out.append((stage, self.trial_config(model, train, name=f"taxonomy-{stage}", batches=[self.batch],
                                                 ref_batch=self.batch, ref_lr=self.lr)))
        return out


def _label_verdict(paper: str, ours: str) -> str:
    """``reproduced`` when our label is the paper's, ``not significant`` when our gains were within noise, else
    ``not reproduced``."""
    return "reproduced" if ours == paper else "not significant" if ours in ("no measurable gain", "unscored") else "not reproduced"


def claims(summary: pd.DataFrame, per_seed: pd.DataFrame) -> pd.DataFrame:
    """The claims table (:func:`~specscope.experiments.claims.claims_frame`) for the transitions the paper speaks of:
    its label beside ours (from the seed-averaged gains and their noise, ``summary`` from
    :func:`~specscope.analysis.lens.taxonomy_over_seeds`) and the token gain > 0 over seeds (``per_seed``: the
    per-seed :func:`~specscope.analysis.lens.taxonomy` rows), with verdicts from :mod:`specscope.analysis.stats`."""
    rows = []
    for r in summary.itertuples():
        if r.transition not in PAPER_LABELS:
            continue
        paper, why = PAPER_LABELS[r.transition]
        tok = estimate(per_seed.loc[per_seed["transition"] == r.transition, "tok_gain"])
        thr = estimate(per_seed.loc[per_seed["transition"] == r.transition, "thr_gain"])
        if paper is not None:
            ours = (f"{r.label} (spectral lean: {r.spectral_lean}; token gain {tok.text('{:+.3f}')}, "
                    f"throughput gain {thr.text('{:+.3f}')})")
            rows.append(claim(f"label of {r.transition}", f"{paper} ({why})", None, _label_verdict(paper, r.label), ours))
        rows.append(claim(f"token gain T(a)/T(b) - 1 of {r.transition} > 0",
                          f"> 0 ({'an ' + paper + ' gain' if paper else why})", tok, verdict(tok, 0.0, +1), fmt="{:+.3f}"))
    return claims_frame(rows)


def stage_dir(out_dir: str | Path, stage: str, seed: int) -> Path:
    """Where the study keeps the run of ``stage`` trained with ``seed``: ``out_dir/trials/<stage>-seed<seed>``."""
    return trial_dir(out_dir, f"{stage}-seed{seed}")


def run_taxonomy(cfg: TaxonomyExperiment, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    """Train (or resume) one run per stage of the chain and seed of ``cfg.seeds`` under ``out_dir`` and label the
    transitions: an :class:`ExperimentResult` whose table holds the per-seed
    :func:`~specscope.analysis.lens.taxonomy` rows with a ``seed`` column (also ``taxonomy.csv``), claims from
    :func:`claims`, figure ``taxonomy.png``; ``extra`` holds ``summary`` (the seed-averaged transitions and their
    labels, :func:`~specscope.analysis.lens.taxonomy_over_seeds`, also ``taxonomy_summary.csv``), ``target`` (the
    given loss or None), ``chain_target`` (the loosest loss every stage of the first seed reached), ``stages``
    (per stage and seed, ``stages.csv``), ``runs`` (the first seed's chain) and ``seeds``. RuntimeError when a
    stage did not train."""
    from ..report.lens_figures import taxonomy_figure

    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables, stages, chains = [], [], []
    for seed in cfg.seeds:
        for stage, scfg in cfg.stage_configs(seed):
            run_trial(asdict(scfg), {"name": stage_dir(out, stage, seed).name, "batch": cfg.batch, "lr": cfg.lr}, cfg.tokens,
                      str(out), progress)
        dirs = [stage_dir(out, s, seed) for s in cfg.chain]
        missing = [d.name for d in dirs if not is_run_dir(d)]
        if missing:
            raise RuntimeError(f"stages {missing} did not train; see the warnings above")
        chain = [open_run(d) for d in dirs]
        target = cfg.target if cfg.target is not None else common_target(chain)
        # no target given: each pair at the loosest loss both reached
        tables.append(taxonomy(chain, cfg.target, names=list(cfg.chain)).assign(seed=seed))
        stages.append(chain_stages(chain, target, cfg.chain).assign(seed=seed, target=target))
        chains.append(chain)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "taxonomy.csv", index=False)
    summary = taxonomy_over_seeds(tables)
    summary.to_csv(out / "taxonomy_summary.csv", index=False)
    stage_table = pd.concat(stages, ignore_index=True)
    stage_table.to_csv(out / "stages.csv", index=False)
    chain_target = float(stages[0]["target"].iloc[0])
    fig = out / "taxonomy.png"
    taxonomy_figure(chains[0], list(cfg.chain), summary, chain_target, per_seed=table).savefig(fig, dpi=110)
    return ExperimentResult(table, claims(summary, table), out, fig,
                            {"summary": summary, "target": cfg.target, "chain_target": chain_target, "stages": stage_table,
                             "runs": chains[0], "seeds": len(cfg.seeds)})

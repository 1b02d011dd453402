"""``specscope experiment lens`` (SPEC 5.6, Spectral Lens section 3 at our scale): one family (the
reference GPT on the stdlib corpus) across batch tiers, each with the square-root learning-rate
rule ``lr0 * sqrt(B / B0)`` (the center of the sweep's candidates; a full sweep is ``specscope
sweep``), trained to the same token budget with the activation probe at common token counts.

Per tier: tokens to target ``T(B)``, ``eps_tok``, throughput, and the early ``alpha_tail`` of the
deepest activation spectrum at 20% of the median ``T``; Spearman rho within the family; rho as a
function of the early budget (the paper's Fig. 8); the activation spectra at matched loss (Fig. 1a).
The target, unless given, is the loosest loss every tier reached: the largest of the tiers' best
validation losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.lens import align, effective_batch, forecast
from ..probes import Activations, make_pool
from ..store.reader import open_run
from .corpus import load_corpus, megabytes
from .experiments import ExperimentResult
from .model import GPTConfig
from .trainer import TrainConfig, train


@dataclass
class LensExperiment:
    batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    ref_batch: int = 8
    ref_lr: float = 3e-3
    micro_batch: int = 16
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    seq_len: int = 128
    tokens: int = 2_000_000  # per tier
    eval_tokens: int = 50_000  # evaluate / probe every this many tokens
    target: float | None = None
    budget_frac: float = 0.2
    pool_size: int = 64
    seed: int = 0
    max_corpus_mb: float | None = None

    @classmethod
    def quick(cls) -> "LensExperiment":
        return cls(batches=(1, 2, 4), ref_batch=2, micro_batch=4, n_layer=2, d_model=32, n_head=2, seq_len=32, tokens=12_000,
                   eval_tokens=1_000, pool_size=8, max_corpus_mb=2.0)


def run_lens(cfg: LensExperiment, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus("stdlib", max_bytes=megabytes(cfg.max_corpus_mb))
    pool = make_pool(corpus.probe, n=cfg.pool_size, seq_len=cfg.seq_len, seed=0)
    model_cfg = GPTConfig(vocab_size=corpus.vocab_size, seq_len=cfg.seq_len, n_layer=cfg.n_layer, n_head=cfg.n_head,
                          d_model=cfg.d_model)
    runs = []
    for b in cfg.batches:
        micro = min(b, cfg.micro_batch)
        per_step = b * cfg.seq_len
        every = max(1, round(cfg.eval_tokens / per_step))
        tcfg = TrainConfig(steps=math.ceil(cfg.tokens / per_step), micro_batch=micro, grad_accum=b // micro,
                           lr=cfg.ref_lr * math.sqrt(b / cfg.ref_batch), warmup=max(1, every), eval_every=every,
                           probe_every=every, lens_every=0, seed=cfg.seed)
        res = train(model_cfg, tcfg, out / f"B{b}", probes=[Activations(pool, every=every)], corpus=corpus, progress=progress,
                    run_id=f"lens-B{b}")
        runs.append(open_run(res.run_dir))
    target = cfg.target if cfg.target is not None else max(
        float(r.scalars()["val_loss"].min()) for r in runs)
    table, verdict = forecast(runs, target=target, budget_frac=cfg.budget_frac)
    table = table.assign(lr=[cfg.ref_lr * math.sqrt(b / cfg.ref_batch) for b in table["batch"]]).sort_values("batch")
    table.to_csv(out / "lens.csv", index=False)
    median_T = float(table["T"].dropna().median())
    curve = rho_vs_budget(runs, target, median_T)
    curve.to_csv(out / "rho_vs_budget.csv", index=False)
    fig = out / "lens.png"
    _figure(runs, table, curve, target).savefig(fig, dpi=110)
    verdict = {**verdict, "target": target, "median_T": median_T}
    return ExperimentResult(table, pd.DataFrame(), out, fig, {"verdict": verdict, "rho_vs_budget": curve})


def rho_vs_budget(runs, target: float, median_T: float, fracs=(0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)) -> pd.DataFrame:
    rows = []
    for f in fracs:
        _, v = forecast(runs, target=target, budget=f * median_T)
        rows.append({"budget_frac": f, "budget_tokens": f * median_T, "rho": v["rho_within_family"]})
    return pd.DataFrame(rows)


def _figure(runs, table: pd.DataFrame, curve: pd.DataFrame, target: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.8), layout="constrained")
    ax_loss, ax_spec, ax_alpha, ax_rho = fig.subplots(1, 4)
    steps = align(runs, loss=target).set_index("run")["step"]
    for i, run in enumerate(sorted(runs, key=effective_batch)):
        b = effective_batch(run)
        color = f"C{i}"
        sc = run.scalars().dropna(subset=["val_loss"])
        ax_loss.plot(sc["tokens"], sc["val_loss"], color=color, label=f"B={b}")
        spec = run.spectra(probe="activations")
        if not spec.empty and pd.notna(steps.get(run.run_id)):
            at = spec[spec["step"] <= steps[run.run_id]].sort_values("step")
            if len(at):
                lam = np.asarray(at["values"].iloc[-1], float)
                p = lam / lam.sum()
                j = np.arange(1, len(p) + 1)
                ax_spec.loglog(j[p > 0], p[p > 0], color=color, label=f"B={b}")
        m = run.metrics(probe="activations", metric="alpha_tail")
        if not m.empty:
            m = m[m["layer"] == m["layer"].max()].sort_values("tokens")
            ax_alpha.plot(m["tokens"], m["value"], color=color, label=f"B={b}")
    ax_loss.axhline(target, color="0.5", lw=0.8, ls="--")
    ax_loss.set_title(f"validation loss; dashed: target {target:.3f}")
    ax_loss.set_xlabel("tokens")
    ax_spec.set_title("activation spectra at matched loss")
    ax_spec.set_xlabel("rank j")
    ax_spec.set_ylabel("p_j")
    ax_alpha.set_title("alpha_tail of the deepest activations")
    ax_alpha.set_xlabel("tokens")
    ax_rho.plot(curve["budget_frac"], curve["rho"], "o-")
    ax_rho.set_title("rho(early alpha_tail, eps_tok) vs budget")
    ax_rho.set_xlabel("early budget / median T")
    for ax in (ax_loss, ax_spec, ax_alpha):
        ax.legend(fontsize=7)
    return fig

"""The grokking experiment (Spectral Edge, SPEC 5.5 / 5.8): modular addition (or Dyck-1) with weight decay on and off.

Each run trains a small reference-family transformer full-batch on a fraction of all pairs
``(a, b)`` of ``a + b mod p`` (task ``add``) or on Dyck-1 strings (task ``dyck1``), under a
:class:`~specscope.Monitor` with the weight probe on ``W_Q`` and a trajectory probe on
``W_Q`` of block 0, logging train / test accuracy and, for modular addition, the Fourier
concentrations of the final hidden state along ``a``: ``H_peak`` and ``H_S`` with ``S`` the
``H_S_FREQS`` (= 5) strongest nonzero frequencies at that evaluation: the same ``|S|`` for every
run and step (grokked modular addition runs on a handful of key frequencies; ``p`` must leave
more than 5 nonzero frequencies, ``p >= 13``).

Per run it reports the grok step (:func:`~specscope.analysis.grokking.grok_step`: the first
evaluation from which test accuracy stays >= 0.95 for the rest of the run, so one lucky
evaluation followed by a drop is not grokking; None if it never settles there) and the spectral
signals before (the measurement nearest half the grok step: the memorization phase), at (nearest
the grok step) and after it (the last measurement).

Claims (:func:`claims`): weight decay on groks in k/n seeds vs off (the paper: 24/24 vs 0/24),
judged by Fisher's exact test (:func:`~specscope.analysis.stats.fisher_verdict`; with 3 seeds a
side the smallest one-sided p is exactly 0.05, so 3/3 vs 0/3 reads "not significant": use
``--seeds 4`` or more for a verdict); the rise of ``gap12`` of ``W_Q`` and of the trajectory gap
ratio from before to the grok step (log ratios over the grokked runs); and ``H_S`` at the end of
the run with vs without weight decay (paired by seed).

Default size: p = 47, 50% of the pairs trained on (1,104 samples), 2,000 full-batch AdamW steps
(lr 1e-3 constant for 1,000 steps, then a cosine to 0, which damps full-batch Adam's late loss
spikes that would otherwise break "stays >= 0.95"), one block of width 64. At that size weight
decay 1.0 groks (seed 0, constant lr: first >= 0.95 at step 700) while weight decay 0 stays near
0.56 test accuracy; 60% of the pairs is too many (weight decay 0 generalizes as well) and a cosine
from step 0 stops grokking within 1,500 steps. Cost, scaled from the previous default (p = 59,
40% of the pairs, 3,000 steps: about 3.5 minutes a run) by steps x training samples: about
1.8 minutes a run, so ``specscope experiment grokking --seeds 3`` (6 runs) takes about 11 minutes on
an idle 2-core machine; smaller runs did not reliably grok.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..analysis.grokking import GROK_ACC, grok_step
from ..analysis.stats import difference, estimate, fisher_verdict, verdict
from ..monitor import Monitor
from ..probes import Trajectory, Weights
from ..progress import track
from ..store.reader import open_run
from ..train import GPT, GPTConfig
from .claims import claim, claims_frame
from .common import ExperimentResult
from .toy import ToyData, accuracy, dyck1, fourier_energy, modular_arithmetic, peak_concentration, top_band_concentration

log = logging.getLogger(__name__)
H_S_FREQS = 5  # |S| of H_S: the same for every run and step
TASKS = ("add", "dyck1")


@dataclass
class GrokConfig:
    """The grokking study's settings: ``task`` (``add`` or ``dyck1``), modulus ``p``, ``train_frac`` (fraction of
    the samples trained on), ``steps`` (full-batch optimizer steps per run), AdamW ``lr`` (constant for the first
    ``decay_from`` fraction of the steps, then decayed as a cosine to 0; 1 = constant), the ``weight_decays`` and
    ``seeds`` crossed into runs, the model's ``n_layer``, ``d_model``, ``n_head``, ``eval_every`` (steps between
    evaluations and probes), the trajectory ``window`` (updates), and the Dyck-1 ``dyck_samples`` and
    ``dyck_length`` (tokens)."""

    # sized for a 2-core CPU (module docstring): weight decay 1.0 groks inside 2,000 steps at p = 47
    task: str = "add"
    p: int = 47
    train_frac: float = 0.5
    steps: int = 2000
    lr: float = 1e-3
    decay_from: float = 0.5  # lr constant for this fraction of the steps, then a cosine to 0 (damps late loss spikes)
    weight_decays: tuple[float, ...] = (1.0, 0.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_layer: int = 1
    d_model: int = 64
    n_head: int = 4
    eval_every: int = 50
    window: int = 16
    dyck_samples: int = 2000
    dyck_length: int = 16

    @classmethod
    def quick(cls) -> "GrokConfig":
        """A seconds-long configuration (p = 23, 60 steps, one seed) for tests and smoke runs."""
        return cls(p=23, train_frac=0.5, steps=60, weight_decays=(1.0, 0.0), seeds=(0,), n_layer=1, d_model=32, n_head=2,
                   eval_every=20, window=4, dyck_samples=400, dyck_length=8)

    def check(self) -> None:
        """ValueError for an unknown task, or a modulus that leaves no more than ``H_S_FREQS`` nonzero frequencies
        (``H_S`` would be 1 whatever the run); None when sound."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}")
        if self.task == "add" and self.p // 2 <= H_S_FREQS:
            raise ValueError(f"p = {self.p} leaves {self.p // 2} nonzero frequencies; H_S needs more than {H_S_FREQS} "
                             f"(p >= {2 * H_S_FREQS + 2})")


def fourier_scalars(model: GPT, x: torch.Tensor, phase: np.ndarray, p: int) -> dict[str, float]:
    """``{"h_peak": float, "h_s": float}``: the Fourier concentrations (fractions in [0, 1]) of the final hidden
    state at the last position along the latent ``phase`` of ``x``, ``S`` the ``H_S_FREQS`` strongest nonzero
    frequencies (:func:`~specscope.experiments.toy.top_band_concentration`)."""
    with torch.no_grad():
        h = model.hidden_states(x)[-1][:, -1].double().numpy()
    m = fourier_energy(h, phase, p)
    return {"h_peak": peak_concentration(m[1:]), "h_s": top_band_concentration(m, H_S_FREQS)}


def task_data(cfg: GrokConfig, seed: int) -> ToyData:
    """The train / test split of ``cfg.task`` for ``seed``: a :class:`~specscope.experiments.toy.ToyData`;
    ValueError for an unknown task."""
    if cfg.task == "add":
        return modular_arithmetic(cfg.p, "+", cfg.train_frac, seed=seed)
    if cfg.task == "dyck1":
        return dyck1(cfg.dyck_samples, cfg.dyck_length, seed=seed, train_frac=cfg.train_frac)
    raise ValueError(f"task must be one of {TASKS}")


def run_one(cfg: GrokConfig, weight_decay: float, seed: int, run_dir: Path) -> dict:
    """Train one monitored run into ``run_dir`` (full-batch AdamW, ``cfg.steps`` steps) and return its row of the
    study's table: ``task`` and the keys of :func:`summarize`."""
    data = task_data(cfg, seed)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=data.vocab_size, seq_len=data.train_x.shape[1], n_layer=cfg.n_layer, n_head=cfg.n_head,
                          d_model=cfg.d_model, tied=False))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    start = cfg.decay_from * cfg.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 if i <= start else 0.5 * (1 + np.cos(np.pi * (i - start) / max(1.0, cfg.steps - start))))
    all_x = torch.cat([data.train_x, data.test_x])
    all_phase = None if data.phase_train is None else np.concatenate([data.phase_train, data.phase_test])
    probes = [Weights(every=cfg.eval_every, kinds=["q"], knee=False),
              Trajectory(window=cfg.window, every=cfg.eval_every, matrices=[(0, "q")], global_track=True)]
    config = {"experiment": "grokking", **asdict(cfg), "weight_decay": weight_decay, "seed": seed, "h_s_freqs": H_S_FREQS}
    with Monitor(model, run_dir, probes=probes, config=config) as mon:
        for step in range(1, cfg.steps + 1):
            logits, _ = model(data.train_x)
            loss = torch.nn.functional.cross_entropy(logits[:, -1], data.train_y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            scalars = {}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                scalars = {"train_acc": accuracy(model, data.train_x, data.train_y),
                           "test_acc": accuracy(model, data.test_x, data.test_y)}
                if all_phase is not None:
                    scalars.update(fourier_scalars(model, all_x, all_phase, cfg.p))
            mon.step(step, loss=loss.item(), tokens=step * len(data.train_x), **scalars)
    return {"task": cfg.task, **summarize(run_dir, weight_decay, seed)}


def _around(series: pd.Series, step: int | None) -> tuple[float, float, float]:
    """Values before (nearest half the grok step), at (nearest the grok step) and after (the last measurement) the
    grok step; NaN where there is none (no grok: only the last)."""
    if series.empty or step is None:
        return (np.nan, np.nan, float(series.iloc[-1]) if not series.empty else np.nan)
    idx = series.index.to_numpy(dtype=float)
    before = series.iloc[int(np.argmin(np.abs(idx - step / 2)))]
    at = series.iloc[int(np.argmin(np.abs(idx - step)))]
    return (float(before), float(at), float(series.iloc[-1]))


def summarize(run_dir: Path, weight_decay: float, seed: int) -> dict:
    """One run's row, read from its store: ``weight_decay``, ``seed``, ``grok_step`` (the first evaluation from
    which test accuracy stays >= 0.95, :func:`~specscope.analysis.grokking.grok_step`; None if it never settles
    there), ``final_train_acc`` and ``final_test_acc`` (fractions), ``gap12`` of block 0's ``W_Q`` and the trajectory
    gap ratio before (nearest half the grok step) / at (nearest the grok step) / after (the last measurement)
    (``gap12_wq_before``, ``gap12_wq_at``, ``gap12_wq_final``, ``traj_gap_*``; NaN where there is none),
    ``h_peak_final``, ``h_s_final`` (fractions; NaN without a latent phase), ``h_s_freqs`` (``|S|``) and
    ``run_dir``."""
    run = open_run(run_dir)
    m = run.metrics()
    sc = run.scalars()
    gap12 = m[(m["probe"] == "weights") & (m["layer"] == 0) & (m["kind"] == "q") & (m["metric"] == "gap12")].set_index("step")["value"]
    traj = m[(m["probe"] == "trajectory") & (m["layer"] == 0) & (m["kind"] == "q") & (m["metric"] == "gap_ratio")].set_index("step")["value"]
    ev = sc.dropna(subset=["test_acc"]).sort_values("step") if "test_acc" in sc else sc.head(0)
    grok = grok_step(ev["step"], ev["test_acc"]) if len(ev) else None
    g_b, g_a, g_f = _around(gap12.sort_index(), grok)
    t_b, t_a, t_f = _around(traj.sort_index(), grok)
    last = ev.iloc[-1] if len(ev) else None
    return {"weight_decay": weight_decay, "seed": seed, "grok_step": grok,
            "final_train_acc": float(last["train_acc"]) if last is not None else np.nan,
            "final_test_acc": float(last["test_acc"]) if last is not None else np.nan,
            "gap12_wq_before": g_b, "gap12_wq_at": g_a, "gap12_wq_final": g_f,
            "traj_gap_before": t_b, "traj_gap_at": t_a, "traj_gap_final": t_f,
            **{f"{k}_final": float(last[k]) if last is not None and k in last else np.nan for k in ("h_peak", "h_s")},
            "h_s_freqs": H_S_FREQS, "run_dir": str(run_dir)}


def _log_ratio(table: pd.DataFrame, at: str, before: str) -> list[float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return list(np.log(table[at].astype(float) / table[before].astype(float)))


def claims(table: pd.DataFrame) -> pd.DataFrame:
    """The study's claims table (:func:`~specscope.experiments.claims.claims_frame`) from its per-run ``table``:
    grokking with vs without weight decay (Fisher's exact test), the rise of ``gap12`` of ``W_Q`` and of the
    trajectory gap ratio from before to the grok step (log ratios over the grokked runs, Student-t over runs) and
    the final ``H_S`` with vs without weight decay (paired by seed)."""
    on, off = table[table["weight_decay"] > 0], table[table["weight_decay"] == 0]
    k_on, k_off = int(on["grok_step"].notna().sum()), int(off["grok_step"].notna().sum())
    p, v = fisher_verdict(k_on, len(on), k_off, len(off), side=+1)
    rows = [claim("runs that grok (test accuracy >= 0.95 for the rest of the run): weight decay on vs off",
                  "24/24 with weight decay vs 0/24 without (Spectral Edge section 27)", None, v,
                  f"{k_on}/{len(on)} vs {k_off}/{len(off)} (Fisher's exact test, one-sided p = {p:.3g})")]
    grokked = table[table["grok_step"].notna()]
    for at, before, what, paper in (
            ("gap12_wq_at", "gap12_wq_before", "gap12 = s1/s2 of W_Q (block 0)",
             "rises at grokking as the top direction separates (modular arithmetic; Dyck: opens after it)"),
            ("traj_gap_at", "traj_gap_before", "trajectory gap ratio of W_Q (block 0)",
             "gap dynamics precede every grokking event (24/24)")):
        est = estimate(_log_ratio(grokked, at, before))
        rows.append(claim(f"{what}: log(at the grok step / half-way to it) > 0, grokked runs", paper, est, verdict(est, 0.0, +1),
                          fmt="{:+.3f}", of="runs"))
    seeds = sorted(set(on["seed"]) & set(off["seed"]))
    h_on = [float(on.loc[on["seed"] == s, "h_s_final"].iloc[0]) for s in seeds]
    h_off = [float(off.loc[off["seed"] == s, "h_s_final"].iloc[0]) for s in seeds]
    est = difference(h_on, h_off, paired=True)
    rows.append(claim(f"H_S (|S| = {H_S_FREQS} frequencies) at the end: weight decay on - off > 0",
                      "grokked solutions concentrate on a few Fourier modes (Spectral Lens App. F: H_S tracks feature learning)",
                      est, verdict(est, 0.0, +1), fmt="{:+.3f}"))
    return claims_frame(rows)


def run_grokking(cfg: GrokConfig, out_dir: str | Path, progress: bool = True) -> ExperimentResult:
    """Every (weight decay, seed) run of ``cfg`` under ``out_dir`` (one run directory each): an
    :class:`~specscope.experiments.common.ExperimentResult` whose table (one row per run, :func:`run_one`) is also
    written as ``grokking.csv``, with :func:`claims`, the figure ``grokking.png`` and ``extra["seeds"]``; ValueError
    for an unsound ``cfg`` (:meth:`GrokConfig.check`)."""
    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(wd, s) for wd in cfg.weight_decays for s in cfg.seeds]
    for wd, seed in track(jobs, "grokking", "run", progress):
        rows.append(run_one(cfg, wd, seed, out / f"wd{wd:g}-seed{seed}"))
    table = pd.DataFrame(rows)
    table.to_csv(out / "grokking.csv", index=False)
    fig_path = out / "grokking.png"
    _figure(table).savefig(fig_path, dpi=110)
    return ExperimentResult(table, claims(table), out, fig_path, {"seeds": len(cfg.seeds)})


def _figure(table: pd.DataFrame):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 3.4), layout="constrained")
    axes = fig.subplots(1, 4)
    for _, row in table.iterrows():
        run = open_run(row["run_dir"])
        sc = run.scalars().dropna(subset=["test_acc"])
        m = run.metrics()
        style = "-" if row["weight_decay"] > 0 else "--"
        color = "C0" if row["weight_decay"] > 0 else "C3"
        lbl = f"wd={row['weight_decay']:g} seed {row['seed']}"
        axes[0].plot(sc["step"], sc["test_acc"], style, color=color, lw=1, label=lbl)
        g = m[(m["probe"] == "weights") & (m["layer"] == 0) & (m["kind"] == "q") & (m["metric"] == "gap12")]
        axes[1].plot(g["step"], g["value"], style, color=color, lw=1)
        t = m[(m["probe"] == "trajectory") & (m["layer"] == 0) & (m["kind"] == "q") & (m["metric"] == "gap_ratio")]
        axes[2].plot(t["step"], t["value"], style, color=color, lw=1)
        if "h_s" in sc:
            axes[3].plot(sc["step"], sc["h_s"], style, color=color, lw=1)
        if pd.notna(row["grok_step"]):
            for ax in axes:
                ax.axvline(row["grok_step"], color=color, lw=0.6, alpha=0.5)
    titles = ["test accuracy", "gap12 of W_Q (block 0)", "trajectory gap ratio of W_Q (block 0)",
              f"H_S (top {H_S_FREQS} frequencies)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].axhline(GROK_ACC, color="0.6", lw=0.8)
    axes[0].legend(fontsize=6)
    return fig

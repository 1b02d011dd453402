"""The grokking experiment (Spectral Edge, SPEC 5.5 / 5.8): modular addition (or Dyck-1) with weight decay on and off.

Each run trains a small reference-family transformer full-batch on a fraction of all pairs
``(a, b)`` of ``a + b mod p`` (task ``add``) or on Dyck-1 strings (task ``dyck1``), under a
:class:`~specscope.Monitor` with the weight probe on ``W_Q`` and a trajectory probe on
``W_Q`` of block 0, logging train / test accuracy and, for modular addition, the Fourier
concentrations of the final hidden state along ``a``: ``H_peak`` and ``H_S`` with ``S`` the
``TOP_FREQS`` strongest frequencies at that evaluation (grokked modular addition runs on a
handful of key frequencies). Per run it reports the grok step (first evaluation with test
accuracy >= 0.95, or none) and the spectral signals before, at and after it.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..monitor import Monitor
from ..probes import Trajectory, Weights
from ..store.reader import open_run
from ..train import GPT, GPTConfig
from .claims import claims_frame
from .toy import ToyData, accuracy, band_concentration, dyck1, fourier_energy, modular_arithmetic, peak_concentration

log = logging.getLogger(__name__)
GROK_ACC = 0.95
TOP_FREQS = 5
TASKS = ("add", "dyck1")


@dataclass
class GrokConfig:
    """The grokking study's settings: ``task`` (``add`` or ``dyck1``), modulus ``p``, ``train_frac`` (fraction of
    the samples trained on), ``steps`` (full-batch optimizer steps per run), AdamW ``lr``, the ``weight_decays`` and
    ``seeds`` crossed into runs, the model's ``n_layer``, ``d_model``, ``n_head``, ``eval_every`` (steps between
    evaluations and probes), the trajectory ``window`` (updates), and the Dyck-1 ``dyck_samples`` and
    ``dyck_length`` (tokens)."""

    # sized for a 2-core CPU: about 3 minutes a run, 6 runs (p = 97, width 128 takes ~1.3 s a step there)
    task: str = "add"
    p: int = 59
    train_frac: float = 0.4
    steps: int = 3000
    lr: float = 1e-3
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
        """A seconds-long configuration (p = 11, 60 steps, one seed) for tests and smoke runs."""
        return cls(p=11, train_frac=0.5, steps=60, weight_decays=(1.0, 0.0), seeds=(0,), n_layer=1, d_model=32, n_head=2,
                   eval_every=20, window=4, dyck_samples=400, dyck_length=8)


def fourier_scalars(model: GPT, x: torch.Tensor, phase: np.ndarray, p: int) -> dict[str, float]:
    """``{"h_peak": float, "h_s": float}``: the Fourier concentrations (fractions in [0, 1]) of the final hidden
    state at the last position along the latent ``phase`` of ``x``, ``S`` the ``TOP_FREQS`` strongest nonzero
    frequencies."""
    with torch.no_grad():
        h = model.hidden_states(x)[-1][:, -1].double().numpy()
    m = fourier_energy(h, phase, p)[1:]
    return {"h_peak": peak_concentration(m), "h_s": band_concentration(m, np.argsort(m)[::-1][:TOP_FREQS])}


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
    all_x = torch.cat([data.train_x, data.test_x])
    all_phase = None if data.phase_train is None else np.concatenate([data.phase_train, data.phase_test])
    probes = [Weights(every=cfg.eval_every, kinds=["q"], knee=False),
              Trajectory(window=cfg.window, every=cfg.eval_every, matrices=[(0, "q")], global_track=True)]
    config = {"experiment": "grokking", **asdict(cfg), "weight_decay": weight_decay, "seed": seed}
    grok_step = None
    with Monitor(model, run_dir, probes=probes, config=config) as mon:
        for step in range(1, cfg.steps + 1):
            logits, _ = model(data.train_x)
            loss = torch.nn.functional.cross_entropy(logits[:, -1], data.train_y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scalars = {}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                scalars = {"train_acc": accuracy(model, data.train_x, data.train_y),
                           "test_acc": accuracy(model, data.test_x, data.test_y)}
                if all_phase is not None:
                    scalars.update(fourier_scalars(model, all_x, all_phase, cfg.p))
                if grok_step is None and scalars["test_acc"] >= GROK_ACC:
                    grok_step = step
            mon.step(step, loss=loss.item(), tokens=step * len(data.train_x), **scalars)
    return {"task": cfg.task, **summarize(run_dir, grok_step, weight_decay, seed)}


def _around(series: pd.Series, step: int | None) -> tuple[float, float, float]:
    """Values before (last < step), at (nearest), after (last) the grok step; NaN where there is none."""
    if series.empty or step is None:
        return (np.nan, np.nan, float(series.iloc[-1]) if not series.empty else np.nan)
    before = series[series.index < step]
    at = series.iloc[int(np.argmin(np.abs(series.index.to_numpy() - step)))]
    return (float(before.iloc[-1]) if len(before) else np.nan, float(at), float(series.iloc[-1]))


def summarize(run_dir: Path, grok_step: int | None, weight_decay: float, seed: int) -> dict:
    """One run's row, read from its store: ``weight_decay``, ``seed``, ``grok_step`` (None if it never grokked),
    ``final_train_acc`` and ``final_test_acc`` (fractions), ``gap12`` of block 0's ``W_Q`` and the trajectory gap
    ratio before / at / after the grok step (``gap12_wq_before``, ``gap12_wq_at``, ``gap12_wq_final``,
    ``traj_gap_*``; NaN where there is none), ``h_peak_final``, ``h_s_final`` and ``run_dir``."""
    run = open_run(run_dir)
    m = run.metrics()
    sc = run.scalars()
    gap12 = m[(m["probe"] == "weights") & (m["layer"] == 0) & (m["kind"] == "q") & (m["metric"] == "gap12")].set_index("step")["value"]
    traj = m[(m["probe"] == "trajectory") & (m["layer"] == 0) & (m["kind"] == "q") & (m["metric"] == "gap_ratio")].set_index("step")["value"]
    g_b, g_a, g_f = _around(gap12, grok_step)
    t_b, t_a, t_f = _around(traj, grok_step)
    last = sc.dropna(subset=["test_acc"]).iloc[-1] if "test_acc" in sc else None
    return {"weight_decay": weight_decay, "seed": seed, "grok_step": grok_step,
            "final_train_acc": float(last["train_acc"]) if last is not None else np.nan,
            "final_test_acc": float(last["test_acc"]) if last is not None else np.nan,
            "gap12_wq_before": g_b, "gap12_wq_at": g_a, "gap12_wq_final": g_f,
            "traj_gap_before": t_b, "traj_gap_at": t_a, "traj_gap_final": t_f,
            **{f"{k}_final": float(last[k]) if last is not None and k in last else np.nan for k in ("h_peak", "h_s")},
            "run_dir": str(run_dir)}


@dataclass
class GrokResult:
    """The grokking study's outcome: ``table`` (one row per run, see :func:`run_one`), ``out_dir``, ``figure``
    (PNG path), ``extra`` (empty) and ``claims`` (the claims table)."""

    table: pd.DataFrame
    out_dir: Path
    figure: Path | None = None
    extra: dict = field(default_factory=dict)
    claims: pd.DataFrame = field(default_factory=lambda: claims_frame([]))


def run_grokking(cfg: GrokConfig, out_dir: str | Path, progress: bool = True) -> GrokResult:
    """Every (weight decay, seed) run of ``cfg`` under ``out_dir`` (one run directory each): a :class:`GrokResult`
    whose table is also written as ``grokking.csv``, with the figure ``grokking.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    from tqdm.auto import tqdm

    jobs = [(wd, s) for wd in cfg.weight_decays for s in cfg.seeds]
    for wd, seed in tqdm(jobs, desc="grokking", unit="run", disable=not progress):
        rows.append(run_one(cfg, wd, seed, out / f"wd{wd:g}-seed{seed}"))
    table = pd.DataFrame(rows)
    table.to_csv(out / "grokking.csv", index=False)
    fig_path = out / "grokking.png"
    _figure(table).savefig(fig_path, dpi=110)
    return GrokResult(table, out, fig_path)


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
              f"H_S (top {TOP_FREQS} frequencies)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].axhline(GROK_ACC, color="0.6", lw=0.8)
    axes[0].legend(fontsize=6)
    return fig

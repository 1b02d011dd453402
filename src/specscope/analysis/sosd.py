"""Stability of the singular distribution (SPEC 5.1): per matrix the SoSD onset, its peak and floor and the
stability bound; for the run the loss knee, the median onset with its spread over matrices and their distance;
``cos_sd_final`` / ``cos_w_final`` curves.

Rules (documented, configurable through :class:`SosdRule`):

- **SD variation per step** ``||sd_{t+1} - sd_t||_2`` (the paper's ``Delta Sigma_t``, indexed at ``t``): from
  paired measurements ``(t, t + 1)`` (``Weights(paired=True)``) when a matrix has at least ``min_pairs`` of
  them; otherwise the variation between consecutive measurements divided by the steps between them (which
  reads a variation whose direction changes from step to step too low; the verdict says so in ``missing``).
- **LR-normalized** ``sd_variation_lr = sd_variation * tr(Sigma_t) / lr`` with ``tr(Sigma_t) = ||W_t||_*``
  (sum of the singular values at ``t``) and ``lr`` the rate applied to the hidden matrices in that step (the
  logged ``lr_hidden``, else ``lr``). Without a logged learning rate the raw per-step variation is used, and said.
- **Onset** of a matrix: the ``sd_variation_lr`` series is smoothed by a centered moving median over ``smooth``
  samples; its **floor** is the median of the samples in the last ``floor_frac`` of the run (by step); the onset
  is the first sample step after the peak of the smoothed series from which every later smoothed value lies
  within a factor ``factor`` of the floor (``floor / factor <= x <= factor * floor``). None when the smoothed
  peak is itself within that factor (no decay onto a floor) or the series never settles.
- **Loss knee**: on the validation loss ``val_loss`` (the training loss only when too few validation losses were
  logged: ``knee_loss`` says which, ``missing`` why), smoothed by a centered moving average over ``smooth_frac``
  of its points; its decrease rate per token (per step when the run logged no tokens, said so) is taken between
  points ``smooth_frac`` of them apart; the knee is the first step after the rate's maximum where it falls
  below ``knee_frac`` of that maximum.
- **Run**: the median onset over matrices with a percentile-bootstrap 95% interval over matrices
  (:func:`~specscope.analysis.stats.bootstrap`), its distance to the knee as a fraction of the run (the last
  step), the median floors, and per matrix the stability bound ``lr / ||W||_*`` at the onset and at the last
  measurement.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..store.reader import Run
from .coverage import RunContents, contents, join, training_scalars
from .stats import bootstrap
from .timeseries import across_time, lr_at, lr_series, moving_average, moving_median

log = logging.getLogger(__name__)

ID = ["layer", "kind", "part", "name"]
SERIES_COLUMNS = ["step", *ID, "sd_variation", "sd_variation_lr", "nuclear_norm", "lr", "paired"]


@dataclass
class SosdRule:
    """The SoSD rules' settings (module docstring): onset ``factor`` (f) around the floor, the floor over the last
    ``floor_frac`` of the run, the moving-median width ``smooth`` (samples), ``min_pairs`` paired measurements a
    matrix needs for its per-step variation to be measured; the loss knee at ``knee_frac`` of the maximum
    decrease rate, smoothed over ``smooth_frac`` of the loss points."""

    factor: float = 2.0
    floor_frac: float = 0.2
    smooth: int = 5
    min_pairs: int = 3
    knee_frac: float = 0.1
    smooth_frac: float = 0.05


def floor_of(steps: np.ndarray, values: np.ndarray, floor_frac: float = 0.2) -> float:
    """The median of the finite ``values`` at ``steps`` in the last ``floor_frac`` of their step span (NaN when
    there is none), in the units of ``values``."""
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    ok = np.isfinite(values) & np.isfinite(steps)
    if not ok.any():
        return float("nan")
    lo, hi = steps[ok].min(), steps[ok].max()
    late = ok & (steps >= hi - floor_frac * (hi - lo))
    return float(np.median(values[late]))


def onset_step(steps: np.ndarray, values: np.ndarray, factor: float = 2.0, floor_frac: float = 0.2,
               smooth: int = 5) -> int | None:
    """The SoSD onset of one matrix (rule in the module docstring) from its ``sd_variation_lr`` ``values`` at
    ``steps``: a step, or None when the series does not decay onto its floor."""
    steps, values = np.asarray(steps), np.asarray(values, float)
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    if len(values) < 3:
        return None
    floor = floor_of(steps, values, floor_frac)
    if not floor > 0:
        return None
    sm = moving_median(values, smooth)
    peak = int(np.argmax(sm))
    if sm[peak] <= factor * floor:
        return None
    inside = (sm <= factor * floor) & (sm >= floor / factor)
    i = len(sm)
    while i > peak + 1 and inside[i - 1]:
        i -= 1
    return int(steps[i]) if i < len(sm) else None


def loss_knee(steps: np.ndarray, loss: np.ndarray, knee_frac: float = 0.1, smooth_frac: float = 0.05,
              tokens: np.ndarray | None = None) -> int | None:
    """The step where the smoothed loss-decrease rate falls below ``knee_frac`` of its maximum (after it), or None.

    The rate is per token when ``tokens`` (one per step) is given and strictly increasing over
    the finite losses, else per step.
    """
    ok = np.isfinite(np.asarray(loss, float)) & np.isfinite(np.asarray(steps, float))
    steps, loss = np.asarray(steps, float)[ok], np.asarray(loss, float)[ok]
    if len(loss) < 5:
        return None
    x = steps
    if tokens is not None:
        tok = np.asarray(tokens, float)[ok]
        if np.isfinite(tok).all() and (np.diff(tok) > 0).all():
            x = tok
    width = max(1, int(round(smooth_frac * len(loss))))
    sm = moving_average(loss, width)
    lag = max(1, width)
    rate = (sm[:-lag] - sm[lag:]) / (x[lag:] - x[:-lag])
    mid = (steps[:-lag] + steps[lag:]) / 2
    top = int(np.argmax(rate))
    if rate[top] <= 0:
        return None
    after = np.nonzero(rate[top:] < knee_frac * rate[top])[0]
    return int(round(mid[top + after[0]])) if len(after) else None


def _per_matrix(g: pd.DataFrame, lr: pd.Series | None, min_pairs: int) -> pd.DataFrame:
    """One matrix's per-step SD variation samples from its across-time rows ``g`` (one row per measurement, wide):
    the paired samples when there are ``min_pairs``, else every interval divided by its gap."""
    g = g.sort_values("step")
    steps = g["step"].to_numpy()
    gap = np.diff(steps)
    per = g["sd_variation_per_step"].to_numpy(float)[1:]
    nuclear = g["nuclear_norm"].to_numpy(float)
    rate = lr_at(lr, steps[1:]) if lr is not None else np.full(len(gap), np.nan)
    norm = g["sd_variation_lr"].to_numpy(float)[1:] if "sd_variation_lr" in g else np.full(len(gap), np.nan)
    pairs = gap == 1
    keep = pairs if pairs.sum() >= min_pairs else np.ones(len(gap), bool)
    return pd.DataFrame({"step": steps[:-1][keep], "sd_variation": per[keep], "sd_variation_lr": norm[keep],
                         "nuclear_norm": nuclear[:-1][keep], "lr": rate[keep], "paired": bool(pairs.sum() >= min_pairs)})


def variation_series(run: Run, rule: SosdRule = SosdRule(), across: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-step SD variation of every hidden matrix (layer >= 0) as the SoSD rules read it: a long DataFrame
    with columns :data:`SERIES_COLUMNS`: ``step`` (the ``t`` of ``Delta Sigma_t``), the matrix, ``sd_variation``
    (per step, unitless), ``sd_variation_lr`` (unitless; NaN without a logged learning rate), ``nuclear_norm``
    (``||W_t||_*``), ``lr`` (the rate of that step) and ``paired`` (whether the matrix's samples are paired
    measurements). ``across``: :func:`~specscope.analysis.timeseries.across_time`'s frame when already read."""
    a = across_time(run) if across is None else across
    a = a[(a["layer"] >= 0) & (a["probe"] == "weights")] if not a.empty else a
    if a.empty:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    wide = a.pivot_table(index=["step", *ID], columns="metric", values="value").reset_index()
    lr, _ = lr_series(run)
    parts = [_per_matrix(g, lr, rule.min_pairs).assign(**dict(zip(ID, key)))
             for key, g in wide.groupby(ID, sort=True) if g["step"].nunique() >= 2]
    if not parts:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    return pd.concat(parts, ignore_index=True)[SERIES_COLUMNS]


def _matrix_row(key: tuple, g: pd.DataFrame, rule: SosdRule, use_lr: bool) -> dict:
    """The table row of one matrix from its :func:`variation_series` samples ``g``."""
    steps = g["step"].to_numpy()
    values = g["sd_variation_lr" if use_lr else "sd_variation"].to_numpy(float)
    onset = onset_step(steps, values, rule.factor, rule.floor_frac, rule.smooth)
    bound = (g["lr"] / g["nuclear_norm"]).to_numpy(float)
    sm = moving_median(values[np.isfinite(values)], rule.smooth)
    at = np.nonzero(steps == onset)[0] if onset is not None else []
    raw = onset_step(steps, g["sd_variation"].to_numpy(float), rule.factor, rule.floor_frac, rule.smooth)
    return {**dict(zip(ID, key)), "onset_step": onset, "onset_raw": raw,
            "peak_step": int(steps[np.isfinite(values)][np.argmax(sm)]) if len(sm) else None,
            "peak_lr": float(sm.max()) if len(sm) and use_lr else np.nan,
            "floor_lr": floor_of(steps, values, rule.floor_frac) if use_lr else np.nan,
            "floor": floor_of(steps, g["sd_variation"].to_numpy(float), rule.floor_frac),
            "paired": bool(g["paired"].iloc[0]), "samples": int(np.isfinite(values).sum()),
            "bound_at_onset": float(bound[at[0]]) if len(at) else np.nan,
            "bound_final": float(bound[-1]) if len(bound) else np.nan}


def _knee(run: Run, have: RunContents, rule: SosdRule) -> tuple[int | None, str | None, list[str]]:
    """The loss knee, the loss it is on (``"val_loss"``, ``"loss"`` or None) and the sentences saying what the run
    lacked for it."""
    col, note = have.loss_for_knee()
    if col is None:
        return None, None, [note]
    sc = training_scalars(run)
    v = sc[["step", "tokens", col]].dropna(subset=[col])
    knee = loss_knee(v["step"].to_numpy(), v[col].to_numpy(float), rule.knee_frac, rule.smooth_frac,
                     v["tokens"].to_numpy(float) if have.has_tokens else None)
    notes = [note, have.tokens_note("loss-decrease rate")]
    if knee is None:
        notes.append(f"the {'validation' if col == 'val_loss' else 'training'} loss has no knee "
                     f"(its decrease rate never falls below {rule.knee_frac:g} of its maximum)")
    return knee, col, [n for n in notes if n]


def _unavailable(why: str) -> tuple[pd.DataFrame, dict]:
    return pd.DataFrame(), {"verdict": why, "missing": [why], "applies": False}


def sosd(run: Run, rule: SosdRule = SosdRule(), have: RunContents | None = None) -> tuple[pd.DataFrame, dict]:
    """SoSD (SPEC 5.1, rules in the module docstring) of ``run``.

    Returns ``(table, verdict)``. ``table``: one row per hidden matrix (each part of a layer its own row) with
    ``onset_step``, ``onset_raw`` (the same rule on the raw SD variation, which the weight norm's growth and the
    schedule also bring down), ``peak_step``, ``peak_lr`` and ``floor_lr`` (smoothed peak and floor of ``sd_variation_lr``,
    unitless), ``floor`` (raw SD variation per step), ``paired``, ``samples`` and the stability bound
    ``lr / ||W||_*`` at the onset and at the last sample (``bound_at_onset``, ``bound_final``; per unit of
    nuclear norm). ``verdict``: ``onset_median`` (step), ``onset_lo`` / ``onset_hi`` (its bootstrap 95% interval
    over matrices, steps), ``onset_median_raw`` (step), ``onset_by_kind``, ``knee`` (step), ``knee_loss`` (``"val_loss"`` or ``"loss"``),
    ``distance_frac`` (``|onset_median - knee|`` over the run's last step), ``floor`` and ``floor_lr`` (medians over
    matrices), ``paired``, ``matrices``, ``matrices_with_onset``, ``last_step``, ``missing`` (sentences: what the
    run lacked), ``applies`` and the ``verdict`` sentence."""
    have = have if have is not None else contents(run)
    why = have.weights(3, "SoSD onset") or have.hidden("SoSD onset")
    if why:
        return _unavailable(why)
    series = variation_series(run, rule)
    if series.empty:
        return _unavailable("no weight spectra of hidden matrices (layer >= 0) with a fixed length over time")
    use_lr = bool(series["sd_variation_lr"].notna().any())
    table = pd.DataFrame([_matrix_row(key, g, rule, use_lr) for key, g in series.groupby(ID, sort=True)])
    knee, knee_loss, notes = _knee(run, have, rule)
    if not use_lr:
        notes.append("no learning rate logged: onset on the raw SD variation, no stability bound lr / ||W||_*")
    if not table["paired"].all():
        notes.append(f"no paired measurements (t, t+1) for {int((~table['paired']).sum())} of {len(table)} matrices: "
                     "their SD variation per step is the variation between measurements divided by the steps between "
                     "them (Weights(paired=True) measures it)")
    sc = training_scalars(run)
    last = int(max(series["step"].max() + 1, sc["step"].max() if len(sc) else 0))
    onsets = table["onset_step"].dropna().astype(float)
    spread = bootstrap(onsets.to_numpy(), stat=np.median)
    med = spread.mean if len(onsets) else None
    dist = abs(med - knee) / last if med is not None and knee is not None and last > 0 else None
    on = "validation loss" if knee_loss == "val_loss" else "training loss"
    if med is None:
        head = f"no SoSD onset found (0 of {len(table)} matrices decay onto their floor)"
        if knee is not None:
            head += f"; loss knee at step {knee} ({on})"
    else:
        ci = f", 95% CI [{spread.lo:g}, {spread.hi:g}] over matrices" if spread.has_interval else ""
        head = f"median SoSD onset at step {med:g} ({len(onsets)} of {len(table)} matrices{ci})"
        if knee is not None:
            head += (f"; loss knee at step {knee} ({on}): onset {'aligned with' if dist <= 0.1 else 'away from'} the "
                     f"knee, {dist:.0%} of the run apart")
    per_kind = table.groupby("kind")["onset_step"].median().dropna().to_dict()
    raw = table["onset_raw"].dropna().astype(float) if use_lr else onsets
    verdict = {"onset_median": med, "onset_lo": spread.lo if med is not None else None,
               "onset_hi": spread.hi if med is not None else None,
               "onset_median_raw": float(raw.median()) if len(raw) else None,
               "onset_by_kind": {k: float(v) for k, v in per_kind.items()}, "knee": knee, "knee_loss": knee_loss,
               "distance_frac": dist, "floor": float(table["floor"].median()),
               "floor_lr": float(table["floor_lr"].median()) if use_lr else float("nan"),
               "paired": bool(table["paired"].all()), "matrices_with_onset": int(len(onsets)), "matrices": int(len(table)),
               "last_step": last, "missing": notes, "applies": True, "verdict": join(head, *notes)}
    return table, verdict


def sosd_curves(run: Run) -> pd.DataFrame:
    """``cos_sd_final`` per block matrix and step, with ``cos_w_final`` where the run kept checkpoints."""
    across = across_time(run)
    if across.empty:
        return pd.DataFrame(columns=["step", *ID, "cos_sd_final", "cos_w_final"])
    cs = across[(across["metric"] == "cos_sd_final") & (across["layer"] >= 0)][["step", *ID, "value"]]
    cs = cs.rename(columns={"value": "cos_sd_final"})
    cw = checkpoint_cosines(run)
    if cw.empty:
        return cs.assign(cos_w_final=np.nan)
    return cs.merge(cw, on=["step", *ID], how="outer").sort_values("step", kind="stable")


def checkpoint_cosines(run: Run) -> pd.DataFrame:
    """``cos<vec W_t, vec W_T>`` per block matrix over the run's saved checkpoints (empty without any)."""
    from ..errors import CheckpointError
    from ..models.loading import resolve
    from ..spectra.temporal import cos_w_final

    d = run.dir / "checkpoints"
    try:
        ckpts = resolve(d) if d.is_dir() else []
    except CheckpointError:
        ckpts = []
    if len(ckpts) < 2:
        return pd.DataFrame(columns=["step", *ID, "cos_w_final"])
    final = {r.name: r for r in ckpts[-1].catalog() if r.layer >= 0}
    rows = []
    for ck in ckpts:
        for r in ck.catalog():
            f = final.get(r.name)
            if f is None or r.layer < 0:
                continue
            rows.append({"step": ck.step, "layer": r.layer, "kind": r.kind, "part": r.part, "name": r.name,
                         "cos_w_final": cos_w_final(r.read(), f.read())})
        ck.release()
    return pd.DataFrame(rows)

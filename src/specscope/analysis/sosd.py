"""Stability of the singular distribution (SPEC 5.1): SoSD onset per matrix, the loss knee, their
distance, the SD-variation floor, ``cos_sd_final`` / ``cos_w_final`` curves and the stability bound.

Rules (documented, configurable through :class:`SosdRule`):

- **Onset** of a matrix: the first measured step after the peak of its ``sd_variation`` from
  which ``sd_variation`` stays below ``theta * peak`` for the rest of the run (None if never).
- **Loss knee**: on the training loss, smoothed by a centered moving average over ``smooth_frac`` of the run; its decrease rate per token
  (per step when the run logged no tokens, said so) is taken between points ``smooth_frac`` of
  the run apart; the knee is the first step after the rate's maximum where it falls below
  ``knee_frac`` of that maximum.
- **Floor**: median ``sd_variation_per_step`` over the last ``floor_frac`` of the measurements.
- **Stability bound** ``lr / ||W||_F`` at each measurement, with the learning rate applied to the
  hidden matrices (scalar ``lr_hidden``, else ``lr``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..store.reader import Run
from .coverage import RunContents, contents, join
from .timeseries import across_time, moving_average

log = logging.getLogger(__name__)

ID = ["layer", "kind", "part", "name"]


@dataclass
class SosdRule:
    theta: float = 0.05
    knee_frac: float = 0.1
    smooth_frac: float = 0.05
    floor_frac: float = 0.2


def onset_step(steps: np.ndarray, sdv: np.ndarray, theta: float = 0.05) -> int | None:
    """First step after the peak of ``sdv`` from which it stays below ``theta * peak``."""
    ok = np.isfinite(sdv)
    steps, sdv = np.asarray(steps)[ok], np.asarray(sdv)[ok]
    if len(sdv) < 2:
        return None
    peak_i = int(np.argmax(sdv))
    below = sdv < theta * sdv[peak_i]
    # the last index from which every later value is below: scan from the end
    i = len(sdv)
    while i > peak_i + 1 and below[i - 1]:
        i -= 1
    return int(steps[i]) if i < len(sdv) else None


def loss_knee(steps: np.ndarray, loss: np.ndarray, knee_frac: float = 0.1, smooth_frac: float = 0.05,
              tokens: np.ndarray | None = None) -> int | None:
    """The step where the smoothed loss-decrease rate falls below ``knee_frac`` of its maximum (after it).

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


def _norms(run: Run) -> pd.DataFrame:
    m = run.metrics(probe="weights", metric="frob_sq")
    m = m[m["layer"] >= 0][["step", *ID, "value"]].rename(columns={"value": "frob_sq"})
    return m


def _lr(run: Run) -> pd.Series | None:
    sc = run.scalars()
    col = "lr_hidden" if "lr_hidden" in sc else "lr" if "lr" in sc else None
    return None if col is None else sc[["step", col]].dropna().set_index("step")[col]


def stability_bound(run: Run) -> pd.DataFrame:
    """``lr / ||W||_F`` per block matrix and measurement (NaN without a logged learning rate)."""
    norms = _norms(run)
    lr = _lr(run)
    if lr is None or norms.empty:
        return norms.assign(bound=np.nan)
    at = np.interp(norms["step"], lr.index.to_numpy(float), lr.to_numpy(float))
    return norms.assign(lr=at, bound=at / np.sqrt(norms["frob_sq"].to_numpy()))


def _knee(run: Run, have: RunContents, rule: SosdRule) -> tuple[int | None, list[str]]:
    """The loss knee on the loss the run allows, and the sentences that say what it had to do without."""
    col, note = have.loss_for_knee()
    if col is None:
        return None, [note]
    sc = run.scalars()
    v = sc[["step", "tokens", col]].dropna(subset=[col])
    knee = loss_knee(v["step"].to_numpy(), v[col].to_numpy(float), rule.knee_frac, rule.smooth_frac,
                     v["tokens"].to_numpy(float) if have.has_tokens else None)
    notes = [note, have.tokens_note("loss-decrease rate")]
    return knee, [n for n in notes if n]


def _unavailable(why: str) -> tuple[pd.DataFrame, dict]:
    return pd.DataFrame(), {"verdict": why, "missing": [why], "applies": False}


def sosd(run: Run, rule: SosdRule = SosdRule(), have: RunContents | None = None) -> tuple[pd.DataFrame, dict]:
    """Per matrix (every part of a layer its own row): onset step, peak, floor, bound at onset; verdict: loss knee,
    onsets per kind, distance, and what the run lacked (``missing``)."""
    have = have if have is not None else contents(run)
    why = have.weights(3, "SoSD onset") or have.hidden("SoSD onset")
    if why:
        return _unavailable(why)
    across = across_time(run)
    across = across[across["layer"] >= 0] if not across.empty else across
    if across.empty:
        return _unavailable("no weight spectra of hidden matrices (layer >= 0) with a fixed length over time")
    wide = across.pivot_table(index=["step", *ID], columns="metric", values="value").reset_index()
    wide = wide.reindex(columns=[*wide.columns, *(c for c in ("sd_variation", "sd_variation_per_step") if c not in wide)])
    bound = stability_bound(run)
    rows = []
    for key, g in wide.groupby(ID, sort=True):
        g = g.sort_values("step")
        steps, sdv = g["step"].to_numpy(), g["sd_variation"].to_numpy(float)
        finite = np.isfinite(sdv)
        onset = onset_step(steps, sdv, rule.theta)
        n_floor = max(1, int(round(rule.floor_frac * len(g))))
        floor = g["sd_variation_per_step"].to_numpy(float)[-n_floor:]
        b = bound[(bound["layer"] == key[0]) & (bound["name"] == key[3])].set_index("step")["bound"]
        rows.append({**dict(zip(ID, key)), "onset_step": onset,
                     "peak_step": int(steps[np.nanargmax(sdv)]) if finite.any() else None,
                     "peak_sd_variation": float(np.nanmax(sdv)) if finite.any() else np.nan,
                     "floor_per_step": float(np.nanmedian(floor)) if np.isfinite(floor).any() else np.nan,
                     "bound_at_onset": float(b.get(onset, np.nan)) if onset is not None else np.nan,
                     "bound_final": float(b.iloc[-1]) if len(b) else np.nan})
    table = pd.DataFrame(rows)
    knee, notes = _knee(run, have, rule)
    if not have.has_lr:
        notes.append("no learning rate logged: no stability bound lr / ||W||_F")
    last = int(wide["step"].max())
    onsets = table["onset_step"].dropna()
    med = float(onsets.median()) if len(onsets) else None
    dist = abs(med - knee) / last if med is not None and knee is not None and last > 0 else None
    per_kind = table.groupby("kind")["onset_step"].median().dropna().to_dict()
    floors = table["floor_per_step"].dropna()
    if med is None:
        head = f"no SoSD onset found ({len(onsets)} of {len(table)} matrices)"
    elif knee is None:
        head = f"median SoSD onset at step {med:g}; no loss knee found"
    else:
        head = f"onset {'aligned with' if dist <= 0.1 else 'away from'} the loss knee ({dist:.0%} of the run apart)"
    if knee is not None and med is None:
        head += f"; loss knee at step {knee}"
    verdict = {"loss_knee": knee, "median_onset": med, "onset_by_kind": {k: float(v) for k, v in per_kind.items()},
               "distance_frac": dist, "matrices_with_onset": int(len(onsets)), "matrices": int(len(table)),
               "floor_per_step": float(floors.median()) if len(floors) else float("nan"), "last_step": last,
               "knee_on": have.loss_for_knee()[0], "missing": notes, "applies": True, "verdict": join(head, *notes)}
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

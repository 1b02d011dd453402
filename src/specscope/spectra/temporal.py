"""Metrics across time (SPEC section 4): pure functions of spectra and weights."""
from __future__ import annotations

import numpy as np
import torch


def singular_distribution(sv: np.ndarray) -> np.ndarray:
    """``sd_j = s_j / sum_k s_k`` (SoSD Def. 3.1); NaN where the sum is not positive."""
    sv = np.asarray(sv, dtype=np.float64)
    tot = sv.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tot > 0, sv / np.where(tot > 0, tot, 1.0), np.nan)


def eigen_distribution(lam: np.ndarray) -> np.ndarray:
    """``p_j = lam_j / sum_k lam_k``."""
    return singular_distribution(lam)


def compression(stable_rank: np.ndarray) -> np.ndarray:
    """``1 - stable_rank(t) / stable_rank(t0)`` along the last axis, ``t0`` the first entry."""
    sr = np.asarray(stable_rank, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - sr / sr[..., :1]


def sd_variation(sv_series: np.ndarray, steps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``||sd_t - sd_t'||_2`` between consecutive rows of a (T, r) series of singular values.

    Returns (variation, variation per step), each of length T with NaN at t = 0.
    """
    sd = singular_distribution(np.atleast_2d(sv_series))
    var = np.full(len(sd), np.nan)
    if len(sd) > 1:
        var[1:] = np.linalg.norm(sd[1:] - sd[:-1], axis=1)
    per = np.full(len(sd), np.nan)
    if steps is not None and len(sd) > 1:
        dt = np.diff(np.asarray(steps, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            per[1:] = np.where(dt > 0, var[1:] / np.where(dt > 0, dt, 1.0), np.nan)
    return var, per


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis (``cos_sd_final``, ``cos_w_final``)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (a * b).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def cos_sd_final(sv_series: np.ndarray) -> np.ndarray:
    """``cos_sd_final`` (SPEC 4) of a (T, r) series of singular values in step order: the cosine of each row's
    singular distribution with the last row's, one value per row (1.0 at the last; NaN where undefined)."""
    sd = singular_distribution(np.atleast_2d(np.asarray(sv_series, dtype=np.float64)))
    return cosine(sd, sd[-1][None, :])


def cos_w_final(w, w_final, rows: int = 1024) -> float:
    """``cos_w_final`` (SPEC 4): the cosine of ``vec W_t`` and ``vec W_T`` (the final weights), a unitless float in
    float64, accumulated a block of ``rows`` rows at a time (no float64 copy of a whole matrix); NaN when the
    shapes differ or either matrix is all zeros. ``w`` and ``w_final`` are tensors, or anything with ``shape``
    whose row slices ``x[r0:r1]`` are tensors (a :class:`specscope.models.loading.Stream` of a file)."""
    a = w.detach() if isinstance(w, torch.Tensor) else w
    b = w_final.detach() if isinstance(w_final, torch.Tensor) else w_final
    if tuple(a.shape) != tuple(b.shape):
        return float("nan")
    dot = na = nb = 0.0
    for r0 in range(0, a.shape[0], rows):
        x = a[r0 : r0 + rows].to(torch.float64)
        y = b[r0 : r0 + rows].to(torch.float64)
        dot += float((x * y).sum())
        na += float((x * x).sum())
        nb += float((y * y).sum())
    return dot / np.sqrt(na * nb) if na > 0 and nb > 0 else float("nan")


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log) of two eigen distributions; the shorter is zero-padded."""
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    n = max(len(p), len(q))
    p = np.pad(p, (0, n - len(p)))
    q = np.pad(q, (0, n - len(q)))
    if not (np.isfinite(p).all() and np.isfinite(q).all()) or p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log(a[mask] / m[mask])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def sd_variation_lr(per_step: np.ndarray, nuclear: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """``sd_variation_lr`` (SPEC 4, 5.1): the per-step SD variation ending at each row times the nuclear norm
    ``tr(Sigma) = sum_j s_j`` of the row before, over the learning rate ``lr`` of the row (the rate applied in the
    steps that led to it). Unitless; one value per row, NaN at row 0 and where ``lr`` is not positive or finite.
    The SoSD bound makes the variation at most of order ``lr / ||W||_*``, so this is the variation in units of
    its bound: schedules and warm-up change ``sd_variation`` but not this."""
    per = np.asarray(per_step, dtype=np.float64)
    nuc = np.asarray(nuclear, dtype=np.float64)
    rate = np.asarray(lr, dtype=np.float64)
    out = np.full(len(per), np.nan)
    if len(per) > 1:
        ok = np.isfinite(rate[1:]) & (rate[1:] > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[1:] = np.where(ok, per[1:] * nuc[:-1] / np.where(ok, rate[1:], 1.0), np.nan)
    return out


def series_metrics(sv_series: np.ndarray, steps: np.ndarray, lr: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """SPEC section 4 metrics of one matrix's spectra over time, rows in step order.

    Returns ``sd_variation``, ``sd_variation_per_step`` (divided by the steps between rows: the variation
    between consecutive optimizer steps when they are one step apart), ``cos_sd_final`` (against the last
    row), ``compression`` (stable rank against the first row) and ``nuclear_norm`` (``sum_j s_j``, in the
    units of the singular values), each one value per row; with ``lr`` (the learning rate of each row, see
    :func:`sd_variation_lr`) also ``sd_variation_lr`` (unitless).
    """
    sv = np.atleast_2d(np.asarray(sv_series, dtype=np.float64))
    var, per = sd_variation(sv, steps)
    lam = sv * sv
    with np.errstate(divide="ignore", invalid="ignore"):
        stable_rank = lam.sum(axis=1) / lam[:, 0]
    nuclear = sv.sum(axis=1)
    out = {"sd_variation": var, "sd_variation_per_step": per, "cos_sd_final": cos_sd_final(sv),
           "compression": compression(stable_rank), "nuclear_norm": nuclear}
    if lr is not None:
        out["sd_variation_lr"] = sd_variation_lr(per, nuclear, lr)
    return out

"""Rank-decay exponents and the automatic head/tail knee (SPEC section 3).

All functions take a batch of eigen distributions ``p`` of shape (B, r), each row sorted in
descending order, and are vectorized over the batch.
"""
from __future__ import annotations

import numpy as np

# Minimum number of ranks on each side of the knee.
KNEE_MIN_SEGMENT = 5
# Fraction of ranks the knee fit uses: the last ranks carry the finite-size edge roll-off.
KNEE_FIT_FRACTION = 0.9


def rank_fit(p: np.ndarray, window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares line ``ln p_j = c - alpha ln j`` over ``j in [a, b]`` (1-based, inclusive).

    Returns (alpha, c, status), each of shape (B,): alpha (float64, dimensionless), the
    intercept c (float64, in ``ln p`` units) and status (object array, ``"ok"`` or why);
    NaN with a status where the window leaves the spectrum or holds non-positive values.
    """
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    bsz, r = p.shape
    a, b = window
    alpha = np.full(bsz, np.nan)
    icpt = np.full(bsz, np.nan)
    status = np.full(bsz, "ok", dtype=object)
    if a < 1 or b > r or b - a + 1 < 2:
        status[:] = f"window [{a},{b}] outside spectrum of length {r}"
        return alpha, icpt, status
    x = np.log(np.arange(a, b + 1, dtype=np.float64))
    seg = p[:, a - 1 : b]
    bad = ~(seg > 0).all(axis=1) | ~np.isfinite(seg).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.where(seg > 0, seg, np.nan))
    xc = x - x.mean()
    ym = y.mean(axis=1)
    slope = ((y - ym[:, None]) * xc).sum(axis=1) / (xc * xc).sum()
    alpha[~bad] = -slope[~bad]
    icpt[~bad] = (ym - slope * x.mean())[~bad]
    status[bad] = f"non-positive or non-finite values in window [{a},{b}]"
    return alpha, icpt, status


def alpha_rank(p: np.ndarray, window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rank-decay exponent: ``-slope`` of ``ln p_j`` on ``ln j`` over the window (Spectral Lens eq. 2).

    Returns (values, status), each of shape (B,): float64 exponents (dimensionless) and an
    object array of ``"ok"`` or why the value is NaN.
    """
    alpha, _, status = rank_fit(p, window)
    return alpha, status


def _hinge_knee(y: np.ndarray, x: np.ndarray, min_seg: int) -> int | None:
    """Best break index k (segments x[:k], x[k-1:]) of a continuous two-segment line fit.

    Vectorized over all candidates with suffix sums: the hinge basis ``(x - c)_+`` has
    sums that are affine in the suffix sums of 1, x, x^2, y, xy.
    """
    n = len(x)
    if n < 2 * min_seg + 1:
        return None
    ones = np.ones(n)

    def suffix(v: np.ndarray) -> np.ndarray:  # suffix[k] = sum_{j >= k} v_j
        return np.concatenate([np.cumsum(v[::-1])[::-1], [0.0]])

    s1, sx, sxx, sy, sxy = (suffix(v) for v in (ones, x, x * x, y, x * y))
    ks = np.arange(min_seg, n - min_seg)  # break at c = x[k]; hinge non-zero for j > k
    c = x[ks]
    n1, nx, nxx, ny, nxy = (s[ks + 1] for s in (s1, sx, sxx, sy, sxy))
    sh = nx - c * n1
    shh = nxx - 2 * c * nx + c * c * n1
    sxh = nxx - c * nx
    syh = nxy - c * ny
    A = np.empty((len(ks), 3, 3))
    A[:, 0, 0], A[:, 0, 1], A[:, 0, 2] = n, sx[0], sh
    A[:, 1, 0], A[:, 1, 1], A[:, 1, 2] = sx[0], sxx[0], sxh
    A[:, 2, 0], A[:, 2, 1], A[:, 2, 2] = sh, sxh, shh
    rhs = np.stack([np.full(len(ks), sy[0]), np.full(len(ks), sxy[0]), syh], axis=1)
    try:
        beta = np.linalg.solve(A, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return None
    sse = (y * y).sum() - (beta * rhs).sum(axis=1)
    return int(ks[int(np.argmin(sse))])


def head_tail_knee(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Automatic head/tail boundary and the exponent fit past it (beyond Spectral Lens).

    Fits ``ln p_j`` against ``ln j`` on ranks ``1..floor(0.9 r)`` (cut at the last positive
    value) with a continuous two-segment line, choosing the break that minimizes the
    squared error. Returns (knee rank (1-based, float64), ``alpha_tail_auto`` = ``alpha_rank``
    from the knee to the end of the fit range, status), each of shape (B,); NaN with a status
    where a row is non-finite or has too few positive ranks.
    """
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    bsz, r = p.shape
    knees = np.full(bsz, np.nan)
    alphas = np.full(bsz, np.nan)
    status = np.full(bsz, "ok", dtype=object)
    n_fit = int(np.floor(KNEE_FIT_FRACTION * r))
    for i in range(bsz):
        row = p[i, :n_fit]
        if not np.isfinite(row).all():
            status[i] = "non-finite spectrum"
            continue
        pos = np.nonzero(row > 0)[0]
        n = int(pos[-1]) + 1 if len(pos) else 0
        k = _hinge_knee(np.log(row[:n]), np.log(np.arange(1, n + 1, dtype=np.float64)), KNEE_MIN_SEGMENT) if n else None
        if k is None:
            status[i] = f"too few positive ranks ({n}) for a two-segment fit"
            continue
        knee = k + 1  # 1-based rank of the break point
        knees[i] = knee
        a, _ = alpha_rank(row[None, :n], (knee, n))
        alphas[i] = a[0]
    return knees, alphas, status

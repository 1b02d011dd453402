"""WeightWatcher-compatible power-law tail exponent of an ESD (SPEC section 3, ``alpha_mle``).

Continuous power-law MLE ``alpha = 1 + n / sum_{lam_i >= xmin} ln(lam_i / xmin)`` for every
candidate ``xmin`` (each eigenvalue but the largest), KS distance ``D`` between the empirical
tail CDF and the fitted law for each, and the ``xmin`` of least ``D``. Eigenvalues
``<= 1e-5`` are dropped first. All candidates are evaluated at once: suffix sums give every
``alpha``; the KS distances come from one (candidates x eigenvalues) array, in row chunks
bounded by ``max_elems``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EVALS_THRESH = 1e-5


@dataclass
class PowerLawFit:
    """One power-law tail fit of an ESD: ``alpha`` (the exponent, dimensionless), ``xmin`` (the tail's smallest
    eigenvalue, in eigenvalue units), ``n_tail`` (eigenvalues in the tail), ``ks_d`` (KS distance, in [0, 1]),
    ``alpha_sigma`` (standard error of alpha, ``(alpha - 1) / sqrt(n_tail)``) and ``status`` (``"ok"`` or why the
    fields are NaN)."""

    alpha: float
    xmin: float
    n_tail: int
    ks_d: float
    alpha_sigma: float
    status: str = "ok"

    @classmethod
    def failed(cls, status: str) -> "PowerLawFit":
        """A fit that did not happen: NaN everywhere, ``n_tail`` 0, and ``status`` saying why."""
        return cls(np.nan, np.nan, 0, np.nan, np.nan, status)


def fit_power_law(evals: np.ndarray, thresh: float = EVALS_THRESH, max_elems: int = 2**24) -> PowerLawFit:
    """Fit the tail of the eigenvalues ``evals`` (any order) as WeightWatcher 0.7.7 does: a :class:`PowerLawFit`
    (a failed one, NaN with a status, for non-finite input or fewer than 2 eigenvalues above ``thresh``).
    ``max_elems`` bounds the KS work array (elements per chunk)."""
    lam = np.asarray(evals, dtype=np.float64).ravel()
    if not np.isfinite(lam).all():
        return PowerLawFit.failed("non-finite spectrum")
    x = np.sort(lam[lam > thresh])
    n_all = len(x)
    if n_all < 2:
        return PowerLawFit.failed(f"{n_all} eigenvalues above {thresh:g}: too few for a power-law fit")
    logx = np.log(x)
    k = n_all - 1  # candidates: every eigenvalue but the largest
    n = (n_all - np.arange(k)).astype(np.float64)  # tail sizes
    suffix = np.cumsum(logx[::-1])[::-1]  # suffix[i] = sum_{j >= i} log x_j
    denom = suffix[:k] - n * logx[:k]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / denom
    ds = np.ones(k)
    ok = alphas > 1  # NaN (ties at the top) compares False
    rows = int(np.clip(max_elems // n_all, 1, 64))  # a few MiB per work array: its peak adds to analyze's
    # torch for the elementwise work: its vectorized float64 expm1 is ~2x numpy's here
    lx = torch.from_numpy(logx)
    a_all = torch.from_numpy(np.where(ok, alphas, 2.0))  # rows with alpha <= 1 keep D = 1
    n_t = torch.from_numpy(n)
    for start in range(0, k, rows):
        stop = min(k, start + rows)
        a = a_all[start:stop, None]
        # columns from `start` on: the tails of every candidate in this block (upper triangle only)
        rel = (torch.arange(start, n_all, dtype=torch.float64)[None, :]
               - torch.arange(start, stop, dtype=torch.float64)[:, None])  # position in the tail; < 0: below xmin
        dev = (torch.expm1((1.0 - a) * (lx[None, start:] - lx[start:stop, None])).neg_() - rel / n_t[start:stop, None]).abs_()
        dev.masked_fill_(rel < 0, -float("inf"))
        ds[start:stop] = np.where(ok[start:stop], dev.amax(dim=1).numpy(), 1.0)
    best = int(np.argmin(ds))
    alpha = float(alphas[best])
    if not np.isfinite(alpha):
        return PowerLawFit.failed("power-law fit failed")
    n_tail = int((lam >= x[best]).sum())
    sigma = (alpha - 1.0) / np.sqrt(n[best])
    return PowerLawFit(alpha, float(x[best]), n_tail, float(ds[best]), float(sigma))

"""Scalar metrics of one spectrum (SPEC section 3), vectorized over a batch of spectra."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .compute import parallel_map
from .mle import fit_power_law
from .powerlaw import alpha_rank, head_tail_knee
from .windows import HEAD_WINDOW, bank_windows, tail_window, window_name

N_RATIOS = 4  # ratio[1..N_RATIOS]
KSTAR_JMAX = 16


@dataclass
class MetricTable:
    """Values and status per metric for a batch of B spectra: ``values[name]`` a float64 array of shape (B,),
    ``status[name]`` an object array of shape (B,) of ``"ok"`` or the reason the value is NaN."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    status: dict[str, np.ndarray] = field(default_factory=dict)

    def put(self, name: str, vals: np.ndarray, status: np.ndarray | str | None = None) -> None:
        """Store metric ``name`` (values cast to float64) with its status (one string for all rows, one per row,
        or None: ``"ok"``); a non-finite value whose status is ``"ok"`` gets ``"not finite"``. Returns None."""
        vals = np.asarray(vals, dtype=np.float64)
        st = np.full(vals.shape, "ok", dtype=object)
        if isinstance(status, str):
            st[:] = status
        elif status is not None:
            st[:] = status
        st[~np.isfinite(vals) & (st == "ok")] = "not finite"
        self.values[name] = vals
        self.status[name] = st

    def row(self, i: int) -> dict[str, tuple[float, str]]:
        """Spectrum ``i`` of the batch: metric name -> ``(value as a Python float, status)``, in insertion order."""
        return {k: (float(v[i]), str(self.status[k][i])) for k, v in self.values.items()}


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def spectrum_metrics(
    sv: np.ndarray,
    scale: int | None = None,
    head_window: tuple[int, int] = HEAD_WINDOW,
    tail: tuple[int, int] | None = None,
    knee: bool = True,
    mle: bool = True,
) -> MetricTable:
    """Every SPEC section 3 metric for singular values ``sv`` (B, r), each row descending, plus ``log_norm``.

    Returns a :class:`MetricTable` with one value per spectrum for: ``frob_sq`` (sum of
    squared singular values), ``log_norm`` (log10 of it), ``spectral_norm`` (largest singular
    value), ``stable_rank``, ``entropy`` (nats), ``entropy_norm``, ``rankme``, ``alpha_head``,
    ``alpha_tail``, one ``alpha_rank[a:b]`` per bank window, ``head_tail_knee`` (rank) and
    ``alpha_tail_auto`` (``knee``), ``alpha_mle``, ``alpha_weighted``, ``xmin`` (eigenvalue
    units), ``n_tail`` (eigenvalues), ``ks_d``, ``alpha_sigma`` (``mle``), ``gap12``,
    ``ratio[1..4]``, ``kstar`` (rank), ``gap_ratio`` and ``k95`` (ranks). ``scale`` (model
    width) selects the tail window; ``tail`` overrides it. ``knee`` and ``mle`` switch off
    the two fits that cost a Python step per spectrum. Rows with non-finite values or rank 0
    give NaN everywhere with a status.
    """
    sv = np.atleast_2d(np.asarray(sv, dtype=np.float64))
    bsz, r = sv.shape
    out = MetricTable()
    finite = np.isfinite(sv).all(axis=1) if r else np.zeros(bsz, bool)
    s = np.where(finite[:, None], sv, 0.0)
    lam = s * s
    total = lam.sum(axis=1)
    lam1 = lam[:, 0] if r else np.zeros(bsz)
    dead = ~finite | ~(lam1 > 0)
    row_status = np.where(~finite, "non-finite spectrum", np.where(dead, "rank 0", "ok")).astype(object)

    def put(name: str, vals: np.ndarray, st: np.ndarray | str | None = None) -> None:
        vals = np.where(dead, np.nan, vals)
        stat = np.full(bsz, "ok", dtype=object)
        if st is not None:
            stat[:] = st
        stat[dead] = row_status[dead]
        out.put(name, vals, stat)

    p = _safe_div(lam, total[:, None]) if r else lam
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = -plogp.sum(axis=1)
    put("frob_sq", total)
    with np.errstate(divide="ignore"):
        put("log_norm", np.log10(total))  # WeightWatcher's log_norm: log10 of the squared Frobenius norm
    put("spectral_norm", s[:, 0] if r else np.full(bsz, np.nan))
    put("stable_rank", _safe_div(total, lam1))
    put("entropy", entropy)
    put("entropy_norm", entropy / np.log(r) if r > 1 else np.full(bsz, np.nan), None if r > 1 else "rank 1")
    put("rankme", np.exp(entropy))

    put("alpha_head", *alpha_rank(p, head_window))
    win = tail if tail is not None else tail_window(r, scale)
    if win is None:
        put("alpha_tail", np.full(bsz, np.nan), f"no tail window fits a spectrum of length {r}")
    else:
        put("alpha_tail", *alpha_rank(p, win))
    wins = bank_windows(r)
    if win is not None and win not in wins:
        wins.append(win)
    for w in wins:
        put(window_name(w), *alpha_rank(p, w))
    if knee:
        k, a, st = head_tail_knee(p)
        put("head_tail_knee", k, st)
        put("alpha_tail_auto", a, st)

    if mle:
        fits = parallel_map(lambda i: fit_power_law(lam[i]) if not dead[i] else None, list(range(bsz)))
        st = np.array([f.status if f is not None else "" for f in fits], dtype=object)
        get = lambda attr: np.array([getattr(f, attr) if f is not None else np.nan for f in fits], dtype=np.float64)
        alpha = get("alpha")
        put("alpha_mle", alpha, st)
        with np.errstate(divide="ignore", invalid="ignore"):
            put("alpha_weighted", alpha * np.log10(lam1), st)
        for attr in ("xmin", "n_tail", "ks_d", "alpha_sigma"):
            put(attr, get(attr), st)

    ratios = _safe_div(s[:, :-1], s[:, 1:]) if r > 1 else np.full((bsz, 0), np.nan)
    ratios = np.where((s[:, :-1] > 0) & (s[:, 1:] == 0), np.inf, ratios) if r > 1 else ratios
    put("gap12", ratios[:, 0] if r > 1 else np.full(bsz, np.nan), None if r > 1 else "rank 1")
    for j in range(1, N_RATIOS + 1):
        if j < r:
            put(f"ratio[{j}]", ratios[:, j - 1])
    jmax = min(r - 1, KSTAR_JMAX)
    if jmax >= 1:
        head = np.nan_to_num(ratios[:, :jmax], nan=-np.inf)
        kidx = np.argmax(head, axis=1)
        put("kstar", kidx + 1.0)
        put("gap_ratio", ratios[np.arange(bsz), kidx])
    else:
        put("kstar", np.full(bsz, np.nan), "rank 1")
        put("gap_ratio", np.full(bsz, np.nan), "rank 1")
    cum = np.cumsum(lam, axis=1)
    k95 = (cum < 0.95 * total[:, None] * (1 - 1e-12)).sum(axis=1) + 1.0
    put("k95", k95)
    return out

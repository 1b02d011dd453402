"""Singular values of many matrices at once (SPEC section 2).

Every spectrum comes from the float64 Gram on the short side (``r = min(d_out, d_in)``),
so a 768x3072 matrix costs one 768x768 eigenproblem. On the CPU each matrix is one BLAS
``syrk`` and one LAPACK ``eigvalsh``, matrices side by side on the cores; on a GPU matrices
are grouped by shape and stacked, one batched product and one batched ``eigvalsh`` per group.
``method="svd"`` takes exact singular values instead (slower; use it when the smallest
singular values matter: the Gram squares the condition number). For one large matrix,
:func:`singular_values_lowmem` and :func:`singular_values_streamed` bound the extra memory.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

METHODS = ("gram", "svd")


@dataclass
class Spectrum:
    """Singular values (descending, float64) of one matrix, or NaNs with a status."""

    sv: np.ndarray
    status: str = "ok"
    shape: tuple[int, ...] | None = None

    @property
    def eig(self) -> np.ndarray:
        return self.sv**2


def _as_matrix(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A 2-D matrix, or a 3-D stack of equally shaped matrices whose spectra are pooled."""
    t = torch.as_tensor(x)
    if t.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D matrix or a 3-D stack of matrices, got shape {tuple(t.shape)}")
    return t


def _rank(shape: tuple[int, ...]) -> int:
    """Length of the (pooled) spectrum of a matrix or a stack of matrices."""
    return (shape[0] if len(shape) == 3 else 1) * min(shape[-2:])


def _descending(sv: np.ndarray) -> np.ndarray:
    """A stack's per-slice singular values pooled into one descending spectrum."""
    return -np.sort(-sv.reshape(-1))


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(fn, items: list) -> list:
    """``map`` over a small thread pool with BLAS held to one thread per call.

    LAPACK's tridiagonal reduction is memory-bound and scales poorly inside one call;
    independent matrices side by side use the cores better (measured: 1.5x on 2 cores).
    """
    if len(items) <= 1 or _workers() == 1:
        return [fn(x) for x in items]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(_workers()) as pool:
        return list(pool.map(fn, items))


class NonFinite(ValueError):
    """The matrix holds NaN or Inf."""


# Entries whose squares (summed over a row) would overflow or underflow the float64 Gram: the matrix is
# divided by a power of two first (exact) and the singular values multiplied back.
_GRAM_BIG, _GRAM_SMALL = 2.0**400, 2.0**-400


def gram_scale(amax: float) -> float:
    """The power of two to divide a matrix by before its float64 Gram (1.0 when its largest ``|w|`` needs none)."""
    if _GRAM_SMALL <= amax <= _GRAM_BIG or amax == 0:
        return 1.0
    return float(2.0 ** np.floor(np.log2(amax)))


def failure_status(exc: BaseException) -> str:
    """A status a person can act on for a spectrum whose solver raised ``exc``."""
    if isinstance(exc, (np.linalg.LinAlgError, torch.linalg.LinAlgError)):
        return f"eigensolver did not converge ({type(exc).__name__}); try method='svd'"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc):
        return f"out of memory computing the spectrum ({type(exc).__name__}); try singular_values_lowmem"
    return f"spectrum computation failed ({type(exc).__name__}: {exc})"


def too_large_status(amax: float) -> str:
    """Status of a matrix whose float64 Gram overflowed although every entry is finite."""
    return f"entries too large for the float64 Gram (max |w| = {amax:.3g}); use method='svd'"


def _svals_np(x: np.ndarray) -> np.ndarray:
    """Descending singular values of a float64 matrix (or a stack, pooled): Gram on the short side + eigvalsh.

    A matrix with huge (or tiny) entries is divided by a power of two first (:func:`gram_scale`),
    so its Gram neither overflows nor underflows. A NaN/Inf entry anywhere makes the max non-finite.
    """
    amax = max(float(x.max()), -float(x.min())) if x.size else 0.0
    if not np.isfinite(amax):
        raise NonFinite("non-finite entries")
    scale = gram_scale(amax)
    if scale != 1.0:
        x = x / scale
    xt = np.swapaxes(x, -1, -2)
    g = x @ xt if x.shape[-2] <= x.shape[-1] else xt @ x
    if not np.isfinite(np.diagonal(g, axis1=-2, axis2=-1)).all():
        raise NonFinite("non-finite entries")
    sv = sv_from_eig(np.linalg.eigvalsh(g)) * scale
    return _descending(sv) if x.ndim == 3 else sv


def _cpu_svals(w: torch.Tensor, method: str) -> np.ndarray:
    w = w.detach().cpu()
    if w.dtype in (torch.float32, torch.float64, torch.float16):
        x = w.numpy().astype(np.float64)  # single-threaded copy: the pool supplies the parallelism
    else:
        x = w.to(torch.float64).numpy()
    if method == "svd":
        if not np.isfinite(x).all():
            raise NonFinite("non-finite entries")
        sv = np.linalg.svd(x, compute_uv=False)
        return _descending(sv) if x.ndim == 3 else sv
    return _svals_np(x)


def _group_svals(mats: Sequence[torch.Tensor], method: str, device: torch.device | None) -> np.ndarray:
    """Descending singular values for equally-shaped matrices (or stacks, each pooled), shape (B, r)."""
    x = torch.stack([m.detach() for m in mats])
    if device is not None:
        x = x.to(device)
    x = x.to(torch.float64)
    if method == "svd":
        s = torch.linalg.svdvals(x).cpu().numpy()
    else:
        m, n = x.shape[-2:]
        flat = x.flatten(1)
        amax = torch.maximum(flat.amax(dim=1), -flat.amin(dim=1)).cpu().numpy()
        scales = [gram_scale(float(a)) for a in amax]
        scale = torch.tensor(scales, dtype=x.dtype, device=x.device).reshape(-1, *[1] * (x.ndim - 1))
        if any(c != 1.0 for c in scales):
            x = x / scale  # exact (powers of two): huge or tiny entries neither overflow nor underflow the Gram
        g = x @ x.transpose(-1, -2) if m <= n else x.transpose(-1, -2) @ x
        s = sv_from_eig(torch.linalg.eigvalsh(g)) * np.asarray(scales).reshape(-1, *[1] * (g.ndim - 2))  # batched solver
    s = s.reshape(s.shape[0], -1)  # a stack's slices pooled
    return -np.sort(-s, axis=-1)


def singular_values_many(
    matrices: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    method: str = "gram",
    device: torch.device | str | None = None,
    max_batch_elems: int = 64 * 2**20,
) -> dict[str, Spectrum]:
    """Spectra of many matrices, grouped by shape.

    Non-finite or empty matrices give an all-NaN spectrum with a status, never an
    exception. On a GPU, ``max_batch_elems`` bounds how many float64 elements one stacked
    group may hold, splitting large groups into chunks.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    items = list(matrices.items()) if isinstance(matrices, Mapping) else list(matrices)
    dev = torch.device(device) if device is not None else None
    out: dict[str, Spectrum] = {}
    groups: dict[tuple[int, int], list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for name, w in items:
        w = _as_matrix(w)
        shape = tuple(int(s) for s in w.shape)
        r = _rank(shape)
        if r == 0:
            out[name] = Spectrum(np.full(0, np.nan), "empty matrix", shape)
            continue
        if (w.is_cuda or (dev is not None and dev.type == "cuda")) and not bool(torch.isfinite(w).all()):
            out[name] = Spectrum(np.full(r, np.nan), "non-finite entries", shape)
            continue  # (on the CPU the check happens on the Gram, inside the worker)
        groups[shape].append((name, w))
    on_gpu = [(n, w) for members in groups.values() for n, w in members if w.is_cuda or (dev is not None and dev.type == "cuda")]
    if on_gpu:  # batched by shape on the GPU
        for shape, members in groups.items():
            per = max(1, max_batch_elems // max(1, int(np.prod(shape))))
            for i in range(0, len(members), per):
                chunk = members[i : i + per]
                try:
                    svals = _group_svals([w for _, w in chunk], method, dev)
                except Exception as exc:  # solver failure etc.: record, never raise
                    log.warning("spectrum failed for shape %s: %s", shape, exc)
                    for name, _ in chunk:
                        out[name] = Spectrum(np.full(_rank(shape), np.nan), failure_status(exc), shape)
                    continue
                for (name, _), sv in zip(chunk, svals):
                    out[name] = Spectrum(sv, "ok", shape)
    else:  # one LAPACK call per matrix, matrices side by side on the cores
        flat = [(n, w) for members in groups.values() for n, w in members]

        def one(item: tuple[str, torch.Tensor]) -> Spectrum:
            name, w = item
            shape = tuple(int(s) for s in w.shape)
            try:
                return Spectrum(_cpu_svals(w, method), "ok", shape)
            except NonFinite as exc:
                return Spectrum(np.full(_rank(shape), np.nan), str(exc), shape)
            except Exception as exc:
                log.warning("spectrum failed for %s: %s", name, exc)
                return Spectrum(np.full(_rank(shape), np.nan), failure_status(exc), shape)

        for (name, _), spec in zip(flat, parallel_map(one, flat)):
            out[name] = spec
    return {name: out[name] for name, _ in items}


def singular_values(w: torch.Tensor | np.ndarray, method: str = "gram") -> Spectrum:
    """Spectrum of one matrix (see :func:`singular_values_many`)."""
    return singular_values_many([("w", w)], method=method)["w"]


def singular_values_lowmem(w: torch.Tensor, method: str = "gram", chunk_elems: int = 2**22) -> Spectrum:
    """Spectrum of one (possibly large, memory-mapped) matrix with bounded extra memory.

    The float64 Gram is accumulated over column blocks of the long side, so at most
    ``chunk_elems`` float64 elements of ``w`` exist at once beside the Gram itself
    (``method="svd"`` needs a full float64 copy).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    w = _as_matrix(w).detach()
    if w.ndim == 3:  # a stack: one slice at a time, pooled
        specs = [singular_values_lowmem(s, method, chunk_elems) for s in w]
        bad = next((s.status for s in specs if s.status != "ok"), None)
        sv = np.concatenate([s.sv for s in specs]) if specs else np.full(0, np.nan)
        shape3 = tuple(int(s) for s in w.shape)
        return Spectrum(np.full(len(sv), np.nan), bad, shape3) if bad else Spectrum(-np.sort(-sv), "ok", shape3)
    shape = (int(w.shape[0]), int(w.shape[1]))
    r = min(shape)
    if r == 0:
        return Spectrum(np.full(0, np.nan), "empty matrix", shape)
    try:
        if method == "svd":
            x = w.to(torch.float64)
            if not bool(torch.isfinite(x).all()):
                return Spectrum(np.full(r, np.nan), "non-finite entries", shape)
            return Spectrum(torch.linalg.svdvals(x).cpu().numpy(), "ok", shape)
        x = w if shape[0] <= shape[1] else w.T  # r x long
        if x.is_cuda:
            g = torch.zeros(r, r, dtype=torch.float64, device=x.device)
        else:
            g = np.zeros((r, r), order="F")
        cols = max(1, chunk_elems // r)
        for c0 in range(0, x.shape[1], cols):
            blk = x[:, c0 : c0 + cols].to(torch.float64)
            if not bool(torch.isfinite(blk).all()):
                return Spectrum(np.full(r, np.nan), "non-finite entries", shape)
            if x.is_cuda:
                g.addmm_(blk, blk.T)
            else:
                gram_accumulate(g, blk.numpy().T)  # g += blk blk^T
            del blk
        if x.is_cuda:
            g = g.cpu().numpy()
        if not np.isfinite(np.diagonal(g)).all():  # every entry was finite: the Gram overflowed
            return Spectrum(np.full(r, np.nan), too_large_status(float(w.abs().max())), shape)
        return Spectrum(sv_from_eig(desc_eigvalsh(g, overwrite=True)), "ok", shape)
    except Exception as exc:  # LAPACK failure etc.: record, never raise
        log.warning("spectrum failed for shape %s: %s", shape, exc)
        return Spectrum(np.full(r, np.nan), failure_status(exc), shape)


def gram_accumulate(g: np.ndarray, b: np.ndarray) -> None:
    """``g += b^T b`` in place (BLAS syrk, lower triangle; ``g`` Fortran-ordered): no n x n temporary."""
    from scipy.linalg.blas import dsyrk

    dsyrk(1.0, np.asarray(b.T, dtype=np.float64, order="F"), beta=1.0, c=g, trans=0, lower=1, overwrite_c=1)


def desc_eigvalsh(sym: torch.Tensor | np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Eigenvalues of one symmetric matrix (a Gram or a covariance; tensor or array, its lower triangle
    read), float64, descending, negatives from round-off clipped to 0 (NaN stays NaN). ``overwrite=True``
    lets LAPACK overwrite ``sym`` when it is a Fortran-ordered float64 array: no second copy of a large Gram."""
    from scipy.linalg import eigh

    a = np.asarray(sym.detach().cpu().numpy() if isinstance(sym, torch.Tensor) else sym, dtype=np.float64)
    lam = eigh(a, eigvals_only=True, overwrite_a=overwrite, check_finite=False, driver="evd")
    return np.clip(lam[::-1], 0.0, None)


def sv_from_eig(eig: torch.Tensor | np.ndarray) -> np.ndarray:
    """Singular values from the eigenvalues of a Gram ``X X^T`` (or of a covariance): ``sqrt(eig)`` in float64,
    descending along the last axis; negative eigenvalues (round-off of a positive semidefinite matrix) give 0,
    NaN gives NaN (sorted last)."""
    lam = eig.detach().cpu().numpy() if isinstance(eig, torch.Tensor) else eig
    sv = np.sqrt(np.clip(np.asarray(lam, dtype=np.float64), 0.0, None))
    return -np.sort(-sv, axis=-1)


def singular_values_streamed(blocks: Iterator[torch.Tensor], shape: tuple[int, int]) -> Spectrum:
    """Spectrum of a tall-or-square matrix given as consecutive blocks of rows.

    Accumulates the float64 Gram ``sum_b B^T B`` (``d_in x d_in``, the short side when
    ``d_in <= d_out``), so only one block of the matrix is in memory at a time, and takes
    its eigenvalues in place.
    """
    m, n = shape
    if min(shape) == 0:
        return Spectrum(np.full(0, np.nan), "empty matrix", shape)
    try:
        g = np.zeros((n, n), order="F")
        amax = 0.0
        for blk in blocks:
            b = blk.to(torch.float64).numpy()
            amax = max(amax, float(np.abs(b).max()) if b.size else 0.0)
            gram_accumulate(g, b)
            del b, blk
        if not np.isfinite(np.diagonal(g)).all():
            why = too_large_status(amax) if np.isfinite(amax) else "non-finite entries"
            return Spectrum(np.full(min(shape), np.nan), why, shape)
        return Spectrum(sv_from_eig(desc_eigvalsh(g, overwrite=True))[: min(shape)], "ok", shape)
    except Exception as exc:
        log.warning("spectrum failed for shape %s: %s", shape, exc)
        return Spectrum(np.full(min(shape), np.nan), failure_status(exc), shape)

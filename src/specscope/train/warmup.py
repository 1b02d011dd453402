"""Spectral warm-up initialization (SPEC 5.4): each block matrix starts as ``W0 = U diag(c * s_ref) V^T``,
with random orthogonal ``U``, ``V`` and the singular values of the same matrix in a reference model."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..models import MatrixRef, catalog, unwrap
from ..models.loading import resolve
from ..spectra import singular_values_lowmem

log = logging.getLogger(__name__)


def resample_spectrum(s: np.ndarray, r: int) -> np.ndarray:
    """``s`` (descending) at ``r`` ranks: the same curve over relative rank, interpolated in log-space; a float64 array
    of ``r`` values in the units of ``s`` (a copy of ``s`` when ``r == len(s)``)."""
    if len(s) == r:
        return s.copy()
    pos = lambda n: (np.arange(n) + 0.5) / n  # noqa: E731
    logs = np.log(np.clip(s, np.finfo(float).tiny, None))
    return np.exp(np.interp(pos(r), pos(len(s)), logs))


def _random_orthogonal(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed columns


def _write(model: nn.Module, ref: MatrixRef, new: torch.Tensor) -> None:
    """Set the cataloged matrix ``ref`` of ``model`` to ``new`` (any split: the positions come from ``ref.take``)."""
    p = unwrap(model).get_parameter(ref.param)
    where = ref.take(torch.arange(p.numel(), device=p.device).reshape(p.shape)).reshape(-1)
    with torch.no_grad():
        p.view(-1)[where] = new.reshape(-1).to(device=p.device, dtype=p.dtype)


def spectral_warmup(model: nn.Module, reference: str | os.PathLike | nn.Module, scale: float = 1.0, seed: int = 0,
                    kinds: set[str] | None = None) -> int:
    """Re-initialize every block matrix of ``model`` that the reference has at the same (layer, kind, part).

    The reference (a model, a checkpoint, or the last of a checkpoint directory) gives each
    matrix's singular values; a reference matrix of another size gives its spectrum resampled
    over relative rank. ``scale`` multiplies the singular values; ``kinds`` restricts the kinds set. Returns how
    many matrices were set; none is a :class:`CheckpointError`.
    """
    if isinstance(reference, nn.Module):
        ref_cat = catalog(reference)
    else:
        ref_cat = resolve(reference)[-1].catalog()
    by_key = {(r.layer, r.kind, r.part): r for r in ref_cat if r.layer >= 0 and r.slices == 1}
    gen = torch.Generator().manual_seed(seed)
    done = 0
    for ref in catalog(model):
        if ref.layer < 0 or ref.slices != 1 or (kinds is not None and ref.kind not in kinds):
            continue
        src = by_key.get((ref.layer, ref.kind, ref.part))
        if src is None:
            continue
        with torch.no_grad():
            s_ref = singular_values_lowmem(src.read().detach().to(torch.float64), "svd").sv
        m, n = ref.shape
        r = min(m, n)
        s = torch.from_numpy(scale * resample_spectrum(np.asarray(s_ref), r))
        u, v = _random_orthogonal(m, r, gen), _random_orthogonal(n, r, gen)
        _write(model, ref, (u * s) @ v.T)
        done += 1
    if done == 0:
        raise CheckpointError("spectral warm-up: the reference shares no (layer, kind, part) block matrix with the model")
    log.info("spectral warm-up: %d matrices set from the reference", done)
    return done

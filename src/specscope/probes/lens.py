"""Spectral Lens probes: activation covariance spectra and per-sample gradient spectra.

Both measure a fixed probe pool: the same seeded held-out sequences at every measurement
(and across runs, when built with the same seed from the same corpus split).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from .. import measure
from ..spectra import spectrum_metrics
from .base import Measurement, Probe, ProbeContext


def make_pool(tokens, n: int = 64, seq_len: int = 128, seed: int = 0) -> torch.Tensor:
    """A fixed probe pool: ``n`` windows of ``seq_len`` tokens at seeded positions of ``tokens``."""
    arr = np.asarray(tokens)
    if len(arr) < seq_len + 1:
        raise ValueError(f"need more than {seq_len} tokens for the probe pool, got {len(arr)}")
    starts = np.random.default_rng(seed).integers(0, len(arr) - seq_len, size=n)
    return torch.from_numpy(np.stack([arr[s : s + seq_len] for s in starts]).astype(np.int64))


def _emit(out: Measurement, layer: int, kind: str, name: str, quantity: str, values: np.ndarray) -> None:
    """Full spectrum plus the SPEC section 3 metrics (``values``: singular values or eigenvalues)."""
    sv = np.sqrt(np.clip(values, 0, None)) if quantity == "eig" else values
    out.spectra.append({"layer": layer, "kind": kind, "name": name, "quantity": quantity, "values": values.tolist(),
                        "status": "ok" if np.isfinite(values).all() else "non-finite spectrum"})
    table = spectrum_metrics(sv[None, :], mle=False)
    for metric, vals in table.values.items():
        out.add_metric(layer, kind, name, metric, float(vals[0]), str(table.status[metric][0]))


class Activations(Probe):
    """Covariance spectrum of the residual-stream output of chosen blocks (default: the deepest)."""

    name = "activations"

    def __init__(self, pool: torch.Tensor, layers: Iterable[int] = (-1,), every: int = 100, at: Iterable[int] = (),
                 normalize: str = "rms", batch: int = 16, name: str | None = None):
        super().__init__(every, at, name)
        self.pool = torch.as_tensor(pool)
        self.layers = tuple(layers)
        self.normalize = normalize
        self.batch = batch

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layers": list(self.layers), "pool": list(self.pool.shape), "normalize": self.normalize}

    def measure(self, ctx: ProbeContext) -> Measurement:
        covs = measure.activation_covariances(ctx.model, self.pool, self.layers, self.normalize, self.batch)
        out = Measurement()
        for layer, cov in sorted(covs.items()):
            lam = measure.desc_eigvalsh(cov.compute())
            _emit(out, layer, "activation", f"block{layer}", "eig", lam)
        return out


class Gradients(Probe):
    """Singular values of the per-sample gradient matrix of one weight matrix (default: the final block's ``o``)."""

    name = "gradients"

    def __init__(self, pool: torch.Tensor, matrix: str = "o", layer: int = -1, samples: int | None = None, every: int = 100,
                 at: Iterable[int] = (), batch: int = 16, chunk: int = 16, name: str | None = None):
        super().__init__(every, at, name)
        pool = torch.as_tensor(pool)
        self.pool = pool[:samples] if samples else pool
        self.matrix, self.layer, self.batch, self.chunk = matrix, layer, batch, chunk

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "matrix": self.matrix, "layer": self.layer, "samples": len(self.pool)}

    def measure(self, ctx: ProbeContext) -> Measurement:
        gram, ref = measure.gradient_gram(ctx.model, self.pool, self.matrix, self.layer, self.batch, self.chunk)
        out = Measurement()
        _emit(out, ref.layer, ref.kind, ref.name, "sv", np.sqrt(measure.desc_eigvalsh(gram)))
        return out

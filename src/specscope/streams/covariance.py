"""Mergeable streaming covariance (SPEC 1.2): count, mean, M2 in float64, Chan's merge.

torchmetrics-style: ``update(x)``, ``compute()``, ``merge(other)``, ``reset()``. Each batch is
centered on its own mean before its scatter matrix is formed, and batches combine with
Chan et al.'s pairwise update, so a large common offset (mean 1e4, spread 1) costs no
accuracy, and two halves of a pool (or two ranks) merge exactly.
"""
from __future__ import annotations

import torch

from .state import Stream


class StreamingCovariance(Stream):
    """Streaming covariance of ``dim``-dimensional rows: ``count`` (rows seen), ``mean`` (``dim``, float64) and
    ``m2`` (``dim x dim`` centered scatter, float64) on ``device``; :meth:`compute` gives the sample covariance, in
    the squared units of the rows."""

    def __init__(self, dim: int, device: torch.device | str | None = None):
        self.dim = int(dim)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.add_state("count", 0, "custom")
        self.add_state("mean", torch.zeros(self.dim, dtype=torch.float64, device=self.device), "custom")
        self.add_state("m2", torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device), "custom")
        self.reset()

    def update(self, x: torch.Tensor) -> None:
        """Add rows of ``x`` (any leading shape, last dim = ``dim``), accumulated in float64. Returns None."""
        x = x.detach().reshape(-1, self.dim).to(device=self.device, dtype=torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(dim=0)
        xc = x - mean
        self._combine(n, mean, xc.T @ xc)

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b
        self.m2.addr_(delta, delta, alpha=n_a * n_b / n)
        self.count = n

    def merge(self, other: "StreamingCovariance") -> "StreamingCovariance":
        """Fold ``other`` into this accumulator (exact, Chan's update); returns ``self``. ValueError when the
        dimensions differ."""
        if other.dim != self.dim:
            raise ValueError("dimensions differ")
        return super().merge(other)

    def _merge_custom(self, other: "StreamingCovariance") -> None:
        if other.count:
            self._combine(other.count, other.mean.to(self.device), other.m2.to(self.device))

    def compute(self) -> torch.Tensor:
        """The sample covariance ``M2 / (N - 1)``: a ``dim x dim`` float64 tensor on ``device``, all NaN with fewer
        than 2 rows."""
        if self.count < 2:
            return torch.full((self.dim, self.dim), float("nan"), dtype=torch.float64, device=self.device)
        return self.m2 / (self.count - 1)

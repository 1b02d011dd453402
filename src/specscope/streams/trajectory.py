"""Rolling-window Gram of parameter updates (SPEC 1.4), exact or sketched.

``TrajectoryWindow`` keeps the last ``W`` update vectors and their ``W x W`` Gram ``K = X X^T``;
a new update costs its ``W`` inner products (O(W P)), replacing the oldest. ``CountSketch``
maps a ``P``-vector to ``k`` dims with a seeded hash and sign per coordinate; it is linear,
so the sketch of an update is the difference of the sketches of consecutive parameters, and
inner products are preserved in expectation (relative error ~ 1/sqrt(k)).
"""
from __future__ import annotations

import numpy as np
import torch

from ..spectra.compute import desc_eigvalsh, sv_from_eig
from .state import Stream


class CountSketch:
    """Seeded CountSketch ``R^P -> R^k``: ``y[h(i)] += s(i) x[i]``. Calling it on a tensor of ``dim`` elements (any
    shape, flattened) returns its sketch, a float64 tensor of ``k`` elements on the input's device."""

    def __init__(self, dim: int, k: int = 4096, seed: int = 0, device: torch.device | str | None = None):
        g = torch.Generator().manual_seed(seed)
        self.dim, self.k = int(dim), int(k)
        self.bucket = torch.randint(0, self.k, (self.dim,), generator=g).to(device or "cpu")
        self.sign = (torch.randint(0, 2, (self.dim,), generator=g, dtype=torch.int8) * 2 - 1).to(device or "cpu")

    def __call__(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The sketch of ``x`` (``dim`` elements), or, with ``positions`` (int64, one per element of ``x``), of the
        ``dim``-vector holding ``x`` at those positions and zeros elsewhere (a shard's share: the shards' sketches
        add up to the whole vector's). A float64 tensor of ``k`` elements on ``x``'s device."""
        x = x.reshape(-1).to(torch.float64)
        out = torch.zeros(self.k, dtype=torch.float64, device=x.device)
        bucket, sign = (self.bucket, self.sign) if positions is None else (self.bucket[positions], self.sign[positions])
        return out.index_add_(0, bucket.to(x.device), x * sign.to(x.device, torch.float64))


class TrajectoryWindow(Stream):
    """The last ``window`` update vectors (rows of ``X``, oldest first, stored in ``store_dtype`` on ``device``) and
    ``gram`` = ``K = X X^T`` (float64, on the CPU), in squared parameter units. Declared state: ``rows`` stay local,
    ``gram`` sums: windows over disjoint shards of the parameters (one per rank) merge into the Gram of the whole
    update vectors, their inner products being sums over the shards."""

    def __init__(self, window: int, store_dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.window = int(window)
        self.store_dtype = store_dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.add_state("rows", [], "local")  # oldest first
        self.add_state("gram", torch.zeros(0, 0, dtype=torch.float64), "sum")
        self.reset()

    def __len__(self) -> int:
        return len(self.rows)

    def update(self, d: torch.Tensor) -> None:
        """Append one update (any shape, flattened) and its inner products with the rows kept; drop the oldest once
        the window is full. Returns None."""
        d = d.detach().reshape(-1).to(device=self.device, dtype=self.store_dtype)
        d64 = d.to(torch.float64)
        dots = torch.stack([torch.dot(r.to(torch.float64), d64) for r in self.rows] + [torch.dot(d64, d64)]).cpu()
        n = len(self.rows)
        g = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        g[:n, :n] = self.gram
        g[n, :] = dots
        g[:, n] = dots
        self.rows.append(d)
        if n + 1 > self.window:
            self.rows.pop(0)
            g = g[1:, 1:]
        self.gram = g.contiguous()

    def recompute(self) -> torch.Tensor:
        """The Gram ``X X^T`` from scratch (for checks): a float64 ``n x n`` tensor on the CPU, ``n`` the rows kept."""
        x = torch.stack([r.to(torch.float64) for r in self.rows])
        return (x @ x.T).cpu()

    def singular_values(self) -> np.ndarray:
        """Singular values of the window's update matrix ``X`` (one update a row), float64, descending:
        the square roots of the eigenvalues of its Gram ``K = X X^T`` (round-off negatives give 0)."""
        return sv_from_eig(desc_eigvalsh(self.gram))

    def stability(self, top: int = 3) -> np.ndarray:
        """``|<u_j^A, u_j^B>|`` for the top directions of the first (A) and second (B) half of the window: a float64
        array of ``top`` overlaps in [0, 1] (NaN where a half has fewer directions or a zero one).

        With ``X_A = V_A S_A U_A^T`` from the Gram's blocks, ``<u_j^A, u_j^B> = v_j^A^T K_AB v_j^B / (s_j^A s_j^B)``:
        the parameter-space directions are never formed.
        """
        n = len(self.rows)
        h = n // 2
        out = np.full(top, np.nan)
        if h < 1:
            return out
        k = self.gram.numpy()
        ka, kb, kab = k[:h, :h], k[n - h:, n - h:], k[:h, n - h:]
        la, va = np.linalg.eigh(ka)
        lb, vb = np.linalg.eigh(kb)
        la, va, lb, vb = la[::-1], va[:, ::-1], lb[::-1], vb[:, ::-1]
        for j in range(min(top, h)):
            if la[j] > 0 and lb[j] > 0:
                out[j] = abs(va[:, j] @ kab @ vb[:, j]) / np.sqrt(la[j] * lb[j])
        return out

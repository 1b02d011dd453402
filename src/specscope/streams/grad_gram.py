"""Per-sample gradient Gram ``G G^T`` (SPEC 1.3), float64, filled block by block.

:class:`PerSampleGradGram`: one linear map, from hooks on that layer only. For ``y = W x``
applied at every position, the gradient of sequence ``m``'s loss is
``g_m = sum_t delta_{m,t} x_{m,t}^T``. The compact factors (``X_m``, ``Delta_m``) of every sample
are kept; per-sample gradients are materialized a chunk at a time to fill the Gram block by
block: each chunk once when all of them fit in ``KEEP_BYTES`` (float64), else at most two
chunks at once, recomputed per block.

:class:`RowGram`: per-sample gradients already materialized as rows (any parameter, through
``torch.func`` or a backward loop), kept in their own dtype and converted a chunk at a time.
"""
from __future__ import annotations

from typing import Callable

import torch

from .state import Stream


KEEP_BYTES = 64 * 2**20  # per-sample gradients up to this size (float64) are computed once, not once per block


def blocked_gram(m: int, rows: Callable[[int, int], torch.Tensor], chunk: int, device: torch.device,
                 keep_bytes: int = KEEP_BYTES) -> torch.Tensor:
    """The float64 ``m x m`` Gram of rows ``rows(lo, hi)`` (float64), block by block. Each chunk of rows is
    computed once and kept while needed when all ``m`` rows fit in ``keep_bytes``; otherwise two chunks exist at a
    time and a chunk is recomputed for every block it meets."""
    gram = torch.zeros(m, m, dtype=torch.float64, device=device)
    c = max(1, int(chunk))
    kept: dict[int, torch.Tensor] = {}

    def get(a: int) -> torch.Tensor:
        if a in kept:
            return kept[a]
        g = rows(a, min(m, a + c))
        if m * g[0].numel() * 8 <= keep_bytes:
            kept[a] = g
        return g

    for a in range(0, m, c):
        ga = get(a)
        gram[a : a + c, a : a + c] = ga @ ga.T
        for b in range(a + c, m, c):
            gb = get(b)
            blk = ga @ gb.T
            gram[a : a + c, b : b + c] = blk
            gram[b : b + c, a : a + c] = blk.T
            del gb
        kept.pop(a, None)  # no later block needs chunk a
        del ga
    return gram


def factor_rows(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of one linear map as float64 rows ``(B, d_out * d_in)``, from its inputs ``x``
    (B, T, d_in) and the loss gradients at its outputs ``delta`` (B, T, d_out): ``g_m = sum_t delta_{m,t} x_{m,t}^T``
    (``d_out x d_in``, flattened row-major)."""
    d, xx = delta.detach().to(torch.float64), x.detach().to(torch.float64)
    return torch.einsum("bto,bti->boi", d, xx).reshape(x.shape[0], -1)


class _ChunkedGram(Stream):
    """What both accumulators share: the chunk size of the blocked Gram and its device; each declares its per-sample
    state (``"cat"``: merging two accumulators, or two ranks, gives the Gram of the union of their samples)."""

    def __init__(self, chunk: int = 16, device: torch.device | str | None = None):
        self.chunk = int(chunk)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._declare()
        self.reset()

    def _declare(self) -> None:
        raise NotImplementedError


class PerSampleGradGram(_ChunkedGram):
    """The float64 Gram of the per-sample gradients of one linear map, from its inputs and output gradients."""

    def _declare(self) -> None:
        self.add_state("inputs", [], "cat")  # per sample: (T, d_in)
        self.add_state("deltas", [], "cat")  # per sample: (T, d_out)

    def update(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        """Add samples: ``x`` (B, T, d_in) layer inputs, ``delta`` (B, T, d_out) loss gradients at its output, kept
        (detached, in their own dtype) on ``device``. Returns None."""
        for xi, di in zip(x.detach(), delta.detach()):
            self.inputs.append(xi.to(self.device))
            self.deltas.append(di.to(self.device))

    def _grads(self, lo: int, hi: int) -> torch.Tensor:
        return factor_rows(torch.stack(self.inputs[lo:hi]), torch.stack(self.deltas[lo:hi]))

    def compute(self) -> torch.Tensor:
        """The Gram ``G G^T`` of the flattened per-sample gradients: an ``M x M`` float64 tensor on ``device``
        (``M`` samples, in the order added), in squared gradient units."""
        return blocked_gram(len(self.inputs), self._grads, self.chunk, self.device)


class RowGram(_ChunkedGram):
    """The float64 Gram of per-sample gradient rows added with :meth:`update` (``B x P`` each)."""

    def _declare(self) -> None:
        self.add_state("rows", [], "cat")  # per sample: (P,)

    def __len__(self) -> int:
        return len(self.rows)

    def update(self, rows: torch.Tensor) -> None:
        """Add samples: ``rows`` (B, ...), one gradient per sample, flattened to (B, P) and kept (detached, in their
        own dtype) on ``device``. Returns None."""
        self.rows.extend(rows.detach().reshape(rows.shape[0], -1).to(self.device))

    def _grads(self, lo: int, hi: int) -> torch.Tensor:
        return torch.stack(self.rows[lo:hi]).to(torch.float64)

    def compute(self) -> torch.Tensor:
        """The Gram ``G G^T`` of the rows: an ``M x M`` float64 tensor on ``device`` (``M`` rows, in the order added),
        in squared gradient units."""
        return blocked_gram(len(self.rows), self._grads, self.chunk, self.device)

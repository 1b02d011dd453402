"""Per-sample gradient Gram of one linear map (SPEC 1.3), from hooks on that layer only.

For a linear map ``y = W x`` applied at every position, the gradient of sequence ``m``'s loss is
``g_m = sum_t delta_{m,t} x_{m,t}^T``. The compact factors (``X_m``, ``Delta_m``) of every sample
are kept; per-sample gradients are materialized a chunk at a time to fill the float64 Gram
``G G^T`` block by block, so at most two chunks of gradients exist at once.
"""
from __future__ import annotations

import torch


class PerSampleGradGram:
    def __init__(self, chunk: int = 16, device: torch.device | str | None = None):
        self.chunk = int(chunk)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self.inputs: list[torch.Tensor] = []  # per sample: (T, d_in)
        self.deltas: list[torch.Tensor] = []  # per sample: (T, d_out)

    def update(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        """Add samples: ``x`` (B, T, d_in) layer inputs, ``delta`` (B, T, d_out) loss gradients at its output."""
        for xi, di in zip(x.detach(), delta.detach()):
            self.inputs.append(xi.to(self.device))
            self.deltas.append(di.to(self.device))

    def merge(self, other: "PerSampleGradGram") -> "PerSampleGradGram":
        self.inputs += other.inputs
        self.deltas += other.deltas
        return self

    def _grads(self, lo: int, hi: int) -> torch.Tensor:
        d = torch.stack(self.deltas[lo:hi]).to(torch.float64)
        x = torch.stack(self.inputs[lo:hi]).to(torch.float64)
        return torch.einsum("bto,bti->boi", d, x).reshape(hi - lo, -1)

    def compute(self) -> torch.Tensor:
        """The float64 Gram ``G G^T`` (M x M) of the flattened per-sample gradients."""
        m = len(self.inputs)
        gram = torch.zeros(m, m, dtype=torch.float64, device=self.device)
        c = max(1, self.chunk)
        for a in range(0, m, c):
            ga = self._grads(a, min(m, a + c))
            gram[a : a + c, a : a + c] = ga @ ga.T
            for b in range(a + c, m, c):
                gb = self._grads(b, min(m, b + c))
                blk = ga @ gb.T
                gram[a : a + c, b : b + c] = blk
                gram[b : b + c, a : a + c] = blk.T
                del gb
            del ga
        return gram

"""One cataloged weight matrix (SPEC 1.1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class MatrixRef:
    """One cataloged matrix, named by ``(layer, kind, part)``.

    ``read()`` returns it as ``d_out x d_in`` (a view of the live parameter where possible); a
    pooled convolution (``slices > 1``) reads as ``slices x c_out x c_in``, one matrix per
    kernel position, whose singular values are pooled into one spectrum (WeightWatcher's
    convention). ``param`` is the stored parameter it comes from (relative to
    :func:`specscope.models.unwrap` of the model for a live model; the state-dict key for a
    file) and ``take`` maps any tensor shaped like that parameter (a gradient, an update) to
    this matrix the way ``read`` maps the parameter itself. ``source`` is the module holding
    the parameter; ``out_index`` says which outputs of that module this matrix produces when
    the module is a linear layer whose weight rows are this matrix's rows (``None``: all of
    them, or not such a layer: see ``hookable``).
    """

    name: str
    layer: int  # block index; -1 for matrices outside the blocks
    kind: str
    read: Callable[[], torch.Tensor]
    shape: tuple[int, int]  # d_out x d_in (of one slice for a pooled convolution)
    source: str = ""
    out_index: torch.Tensor | None = None
    part: int = -1  # expert / gate index where the matrix is one of several; -1 otherwise
    param: str = ""
    take: Callable[[torch.Tensor], torch.Tensor] | None = None
    slices: int = 1
    hookable: bool = False  # a linear layer (``source``) computes ``x @ W.T`` with this matrix's rows

    @property
    def numel(self) -> int:
        """Elements of the matrix (all slices): ``slices * d_out * d_in``."""
        return self.slices * self.shape[0] * self.shape[1]

    @property
    def rank(self) -> int:
        """Length of the spectrum (number of singular values): ``min(d_out, d_in)`` per slice, pooled over slices."""
        return self.slices * min(self.shape)

"""The per-sample gradient probe (SPEC 1.3): singular values of the per-sample gradient matrix of one
cataloged matrix over a fixed probe pool (see :mod:`specscope.measure.gradients`)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from .. import measure
from ..errors import ConfigError
from ..measure.common import ForwardFn, LossFn, as_pool, pool_len, pool_rows, pool_shapes
from .activations import _check_callable, _emit
from .base import Measurement, Probe, ProbeContext, check_choice, check_int, check_kinds


def check_matrix_choice(who: str, matrix: str, layer: Any, part: Any, matrix_name: str | None) -> None:
    """A :class:`ConfigError` naming ``who`` unless ``layer`` is an integer, ``part`` None or an integer ``>= 0`` and,
    without ``matrix_name``, ``matrix`` a known kind. Returns None."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ConfigError(f"{who}: layer must be a block index (an integer; -1: the last), got {layer!r}")
    if part is not None:
        check_int(f"{who}: part", part, 0)
    if matrix_name is None:
        check_kinds([matrix])


class Gradients(Probe):
    """Singular values of the per-sample gradient matrix of one cataloged matrix (SPEC 1.3).

    The matrix: kind ``matrix`` in layer ``layer`` (default: the final block's ``o``), ``part``
    choosing among several (experts, recurrent gates), or ``matrix_name`` (a catalog entry's
    ``name``; ``name`` is this probe's own name). ``samples``: the first ``samples`` of the pool.
    ``loss_fn(output, batch)``: per-sample losses, shape ``(B,)``; the default next-token
    cross-entropy applies to a pool of token ids only (any other pool without ``loss_fn`` is a
    ``ValueError`` at setup, recorded as NaN with its status at each measurement).
    ``forward_fn(model, batch)``: how to call the model. ``method``: ``"auto"`` (hooks on a
    linear layer, else ``torch.func``, else a loop of single-sample backward passes), or one of
    ``"hooks"``, ``"func"``, ``"loop"`` (see :mod:`specscope.measure.gradients`).
    """

    name = "gradients"

    def __init__(self, pool: Any, matrix: str = "o", layer: int = -1, samples: int | None = None, every: int = 100,
                 at: Iterable[int] = (), batch: int = 16, chunk: int = 16, name: str | None = None, *,
                 matrix_name: str | None = None, part: int | None = None, loss_fn: LossFn | None = None,
                 forward_fn: ForwardFn | None = None, method: str = "auto"):
        super().__init__(every, at, name)
        check_choice("Gradients: method", method, measure.METHODS)
        if samples is not None:
            check_int("Gradients: samples", samples, 1)
        batch, chunk = check_int("Gradients: batch", batch, 1), check_int("Gradients: chunk", chunk, 1)
        check_matrix_choice("Gradients", matrix, layer, part, matrix_name)
        _check_callable("Gradients: loss_fn", loss_fn)
        _check_callable("Gradients: forward_fn", forward_fn)
        pool = as_pool(pool)
        self.pool = pool_rows(pool, 0, samples) if samples else pool
        pool_len(self.pool)
        self.matrix, self.layer, self.batch, self.chunk = matrix, layer, batch, chunk
        self.matrix_name, self.part, self.method = matrix_name, part, method
        self.loss_fn, self.forward_fn = loss_fn, forward_fn

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "matrix": self.matrix, "layer": self.layer, "matrix_name": self.matrix_name,
                "part": self.part, "samples": pool_len(self.pool), "pool": pool_shapes(self.pool),
                "method": self.method}

    def setup(self, model: torch.nn.Module) -> None:
        measure.find_matrix(model, self.matrix, self.layer, name=self.matrix_name, part=self.part)
        measure.resolve_loss(self.loss_fn, self.pool)

    def measure(self, ctx: ProbeContext) -> Measurement:
        gram, ref = measure.gradient_gram(ctx.model, self.pool, self.matrix, self.layer, self.batch, self.chunk,
                                          name=self.matrix_name, part=self.part, loss_fn=self.loss_fn,
                                          forward_fn=self.forward_fn, method=self.method, refs=ctx.catalog)
        out = Measurement()
        _emit(out, ref.layer, ref.kind, ref.name, "sv", np.sqrt(measure.desc_eigvalsh(gram)), ref.part)
        return out

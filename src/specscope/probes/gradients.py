"""The per-sample gradient probe (SPEC 1.3): singular values of the per-sample gradient matrix of one
cataloged matrix over a fixed probe pool (see :mod:`specscope.measure.gradients`)."""
from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np
import torch

from .. import measure
from ..errors import ConfigError
from ..measure.common import ForwardFn, LossFn, as_pool, call_model, pool_len, pool_rows, pool_shapes
from ..models import MatrixRef
from ..spectra.compute import sv_from_eig
from .activations import Activations, _check_callable, _emit
from .base import Measurement, Probe, ProbeContext, check_choice, check_int, check_kinds
from .sharding import pool_streams
from .schedule import ScheduleLike

log = logging.getLogger(__name__)


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
    ``"hooks"``, ``"func"``, ``"loop"`` (see :mod:`specscope.measure.gradients`). ``every`` / ``at``:
    the schedule (:class:`~.base.Probe`).

    Needs ``pool_forward`` and ``layer_backward``. Due at one step with :class:`~.activations.Activations`
    probes over the same pool (the same object or equal tensors; or this probe's pool is that pool's
    first ``samples`` rows, a whole number of batches), with the same ``forward_fn`` and ``batch``,
    and measured through hooks (``method`` ``"auto"`` or ``"hooks"`` on a linear layer), it
    measures them in its own forward pass: one forward per batch instead of two, the same numbers
    (:mod:`specscope.measure.shared`). Otherwise each runs its own pass (logged at DEBUG, once
    per reason).
    """

    name = "gradients"
    needs = frozenset({"pool_forward", "layer_backward"})

    def __init__(self, pool: Any, matrix: str = "o", layer: int = -1, samples: int | None = None, every: ScheduleLike = 100,
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
        self._said_apart: set[tuple[str, str]] = set()
        self._not_shared: str | None = None  # why the shared pass did not apply to this probe's matrix

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "matrix": self.matrix, "layer": self.layer, "matrix_name": self.matrix_name,
                "part": self.part, "samples": pool_len(self.pool), "pool": pool_shapes(self.pool),
                "method": self.method}

    def setup(self, model: torch.nn.Module) -> None:
        measure.find_matrix(model, self.matrix, self.layer, name=self.matrix_name, part=self.part)
        measure.resolve_loss(self.loss_fn, self.pool)

    def measure(self, ctx: ProbeContext) -> Measurement:
        """The singular values of the per-sample gradient matrix (stored as ``sv``) and their SPEC section 3
        metrics, as one :class:`Measurement` (in a distributed job: each rank's share of the pool's batches, their
        per-sample gradients gathered and written by rank 0)."""
        found: list[MatrixRef] = []

        def run(pool: Any) -> dict:
            acc, ref = measure.gradient_stream(ctx.model, pool, self.matrix, self.layer, self.batch, self.chunk,
                                               name=self.matrix_name, part=self.part, loss_fn=self.loss_fn,
                                               forward_fn=self.forward_fn, method=self.method, refs=ctx.catalog)
            found.append(ref)
            return {"gram": acc}

        if ctx.dist is None:
            return self.rows(run(self.pool)["gram"].compute(), found[0])
        accs = pool_streams(ctx, self.pool, self.batch, f"{self.name}@{ctx.step}", run)
        return self.rows(accs["gram"].compute(), found[0]) if accs is not None else Measurement()

    def rows(self, gram: torch.Tensor, ref: MatrixRef) -> Measurement:
        """The stored rows of a per-sample gradient Gram ``G G^T`` of matrix ``ref``: singular values of ``G``."""
        out = Measurement()
        _emit(out, ref.layer, ref.kind, ref.name, "sv", sv_from_eig(measure.desc_eigvalsh(gram)), ref.part)
        return out

    def _apart(self, other: Activations) -> str | None:
        """Why ``other`` cannot be measured in this probe's pass (None: it can)."""
        if self.method not in ("auto", "hooks"):
            return f"method {self.method!r} does not run a forward pass with hooks"
        if self._not_shared is not None:
            return self._not_shared
        if other.batch != self.batch:
            return f"batch sizes differ ({other.batch} vs {self.batch})"
        if (other.forward_fn or call_model) is not (self.forward_fn or call_model):
            return "their forward_fn differ"
        if measure.shared_rows(other.pool, self.pool, self.batch) is None:
            return "different pools (nor the first rows of one, a whole number of batches)"
        return None

    def shares_pass(self, other: Probe) -> bool:
        """True when ``other`` is an :class:`Activations` probe this probe's forward pass can measure (class
        docstring); logs why not at DEBUG, once per probe and reason."""
        if not isinstance(other, Activations):
            return False
        why = self._apart(other)
        if why is not None and (other.name, why) not in self._said_apart:
            self._said_apart.add((other.name, why))
            log.debug("probes %s and %s measure in separate passes: %s", self.name, other.name, why)
        return why is None

    def measure_shared(self, ctx: ProbeContext, others: list[Probe]) -> dict[int, Measurement] | None:
        """This probe and the :class:`Activations` probes among ``others`` that read one pool, from one forward
        pass per batch; keyed by ``id(probe)`` (a probe left out is measured alone); None when the shared
        pass does not apply (logged at DEBUG; each is then measured alone)."""
        acts = [p for p in others if isinstance(p, Activations)]
        if not acts:
            return None
        pool, n = acts[0].pool, pool_len(acts[0].pool)
        acts = [a for a in acts if measure.shared_rows(pool, a.pool, self.batch) == n]  # those reading one pool
        rows = measure.shared_rows(pool, self.pool, self.batch)
        try:
            requests = [a.request(ctx.model) for a in acts]  # a default site is found (once) by running the model
        except Exception as exc:  # each measured alone says what failed
            log.debug("probe %s: activation sites of %s not found (%s); measured apart", self.name,
                      ", ".join(a.name for a in acts), exc)
            return None
        try:
            if rows is None:
                raise measure.NotShared("different pools")
            covs, gram, ref = measure.activations_and_gradient(
                ctx.model, pool, requests, rows, matrix=self.matrix, layer=self.layer, name=self.matrix_name,
                part=self.part, loss_fn=self.loss_fn, forward_fn=self.forward_fn, batch=self.batch, chunk=self.chunk,
                refs=ctx.catalog)
        except measure.NotShared as exc:
            if exc.lasting:  # the matrix, not the step: remembered
                self._not_shared = str(exc)
            log.debug("probes %s and %s measure in separate passes at step %s: %s", self.name,
                      ", ".join(a.name for a in acts), ctx.step, exc)
            return None
        out = {id(a): a.rows(c) for a, c in zip(acts, covs)}
        out[id(self)] = self.rows(gram, ref)
        return out

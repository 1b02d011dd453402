"""One forward pass over a probe pool for activation covariances and a per-sample gradient Gram together.

Measuring activations (:mod:`.activations`) and per-sample gradients through hooks
(:mod:`.gradients`, method ``"hooks"``) over the same pool each run the model forward over every
batch. :func:`activations_and_gradient` runs that forward once per batch: the activation sites'
hooks read the activations (detached, into their float64 covariance streams) and the hooked
linear layer's output is backpropagated from the same forward's per-sample losses. The batches,
their order and every operation on them are those of the separate passes, so the covariances
and the Gram equal theirs (bitwise on the CPU, tested; the part of the forward after the hooked
layer records autograd here, as in the gradient pass alone, which on an accelerator could pick
a different kernel for an activation read there: within float rounding).

When it applies (:func:`shared_rows` and :func:`activations_and_gradient`): the gradient pool
is the activation pool or its first rows (``Gradients(samples=...)`` of one pool: then those
rows must be a whole number of batches, the rest of the pool runs forward for the activations
alone), both are called by one ``forward_fn`` with one batch size, and the gradient matrix is
measured through hooks (its ``method`` is ``"auto"`` or ``"hooks"`` and the hooked path applies
to it). Anything else raises :class:`NotShared` before a covariance or Gram is returned, and the
caller measures each apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from ..models import MatrixRef, unwrap
from ..streams import StreamingCovariance
from .activations import Site, activation_sites, hook_sites, sites_read
from .common import (ForwardFn, LossFn, _batches, _device, as_pool, call_model, leaves, measuring, pool_len,
                     pool_rows, resolve_loss)
from .gradients import _hooked_gram, _not_hookable, _NotHooked, find_matrix


class NotShared(Exception):
    """The shared pass does not apply here (the message says why); measure each probe apart. ``lasting``: the
    reason is the gradient matrix (its layer, its loss), so no later step of the same model shares either."""

    def __init__(self, why: str, lasting: bool = False):
        super().__init__(why)
        self.lasting = lasting


@dataclass(frozen=True)
class ActivationRequest:
    """Where one activation measurement reads (as :func:`~.activations.activation_covariances` takes it):
    block indices ``layers`` or module names ``modules`` (None and None: the deepest block), ``normalize``
    and ``feature_dim``."""

    layers: tuple[int, ...] | None = None
    modules: tuple[str, ...] | None = None
    normalize: str = "rms"
    feature_dim: int | None = None


def _same_tensors(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and x.device == y.device
                                    and (x is y or torch.equal(x, y)) for x, y in zip(a, b))


def shared_rows(pool: Any, grad_pool: Any, batch: int) -> int | None:
    """How many leading rows of ``pool`` (the activation pool) the gradient pool is, when it is ``pool`` itself
    or its first rows, cut at a whole number of ``batch``-sample batches (or all of ``pool``); None otherwise.
    Rows are compared by value (same structure, dtypes, shapes, devices and entries)."""
    if pool is grad_pool:
        return pool_len(as_pool(pool))
    try:
        pool, grad_pool = as_pool(pool), as_pool(grad_pool)
        n, m = pool_len(pool), pool_len(grad_pool)
        if m > n or (m < n and m % batch):
            return None
        head = pool_rows(pool, 0, m)
        same = _structure(head) == _structure(grad_pool) and _same_tensors(leaves(head), leaves(grad_pool))
    except (TypeError, ValueError):  # not pools of one kind
        return None
    return m if same else None


def _structure(pool: Any) -> Any:
    """The pool's nesting with its tensors blanked: two pools with equal leaves and equal structure are equal."""
    if isinstance(pool, torch.Tensor):
        return None
    if isinstance(pool, dict):
        return (dict, tuple((k, _structure(v)) for k, v in pool.items()))
    return (type(pool), tuple(_structure(v) for v in pool))


def activations_and_gradient(model: nn.Module, pool: Any, requests: Iterable[ActivationRequest], grad_rows: int,
                             *, matrix: str = "o", layer: int = -1, name: str | None = None, part: int | None = None,
                             loss_fn: LossFn | None = None, forward_fn: ForwardFn | None = None, batch: int = 16,
                             chunk: int = 16, refs: Iterable[MatrixRef] | None = None
                             ) -> tuple[list[dict[Site, StreamingCovariance]], torch.Tensor, MatrixRef]:
    """Activation covariances for each request over ``pool`` and the per-sample gradient Gram of one matrix over
    its first ``grad_rows`` rows (:func:`shared_rows`), from one forward per batch.

    Returns (one ``{site: covariance}`` per request, as :func:`~.activations.activation_covariances` returns it;
    the float64 Gram ``G G^T`` (``grad_rows x grad_rows``), as :func:`~.gradients.gradient_gram` returns it; the
    matrix). Matrix, loss and call arguments as :func:`~.gradients.gradient_gram`; ``batch`` samples per
    forward, for both. :class:`NotShared` when the shared pass does not apply (a request without a site
    known before running the model, a matrix the hooked path does not take, ``grad_rows`` not a whole number
    of batches, or anything that fails before the forward: measured apart, each raises its own error).
    """
    base = unwrap(model)
    requests = list(requests)
    run = forward_fn or call_model
    n = pool_len(as_pool(pool))
    if not 0 < grad_rows <= n or (grad_rows < n and grad_rows % batch):
        raise NotShared(f"the gradient rows ({grad_rows}) are not a whole number of batches of the pool ({n})")
    grad_pool = pool_rows(as_pool(pool), 0, grad_rows)
    try:
        ref = find_matrix(base, matrix, layer, name=name, part=part, refs=refs)
        loss = resolve_loss(loss_fn, grad_pool)
    except Exception as exc:
        raise NotShared(f"{type(exc).__name__}: {exc}", lasting=True) from exc
    why = _not_hookable(base, ref)
    if why is not None:
        raise NotShared(f"the hooked path does not apply to {ref.name}: {why}", lasting=True)
    try:
        sites = [activation_sites(base, r.layers, r.modules) for r in requests]
    except Exception as exc:
        raise NotShared(f"{type(exc).__name__}: {exc}") from exc
    if any(s is None for s in sites):
        raise NotShared("an activation site is found by running the model (no block list): pass modules=[...]")
    covs: list[dict[Site, StreamingCovariance]] = [{} for _ in requests]
    handles = [h for r, s, c in zip(requests, sites, covs) for h in hook_sites(base, s, c, r.normalize, r.feature_dim)]
    try:
        with measuring(model):
            try:
                gram = _hooked_gram(base, ref, grad_pool, run, loss, batch, chunk).compute()
            except _NotHooked as exc:
                raise NotShared(f"the hooked path does not apply to {ref.name}: {exc}", lasting=True) from exc
            for b in _batches(pool_rows(as_pool(pool), grad_rows, None), batch, _device(base)):
                run(base, b)  # the rows only the activations read
    finally:
        for h in handles:
            h.remove()
    return [sites_read(s, c) for s, c in zip(sites, covs)], gram, ref

"""Per-sample gradient spectra (SPEC 1.3) of any cataloged matrix of any model.

One sample = one row of the pool; ``L_m = loss_fn(output, batch)[m]``; ``g_m`` = the gradient
of ``L_m`` with respect to the stored parameter ``ref.param``, mapped to the cataloged matrix by
``ref.take`` (a slice of a fused q/k/v, one expert of a packed tensor, one gate of a recurrent
weight, a convolution's stack of kernel positions) and flattened: one row of ``G``. The
spectrum is the singular values of ``G``, ``sqrt(eigvalsh(G G^T))`` in float64. Three ways to
get the rows, all equal to :func:`gradient_spectrum_reference`:

- ``"hooks"`` (fast; used when ``ref.hookable``): an ``nn.Linear`` / HF ``Conv1D`` whose weight
  rows are the matrix's rows, its weight used by that module only:
  ``g_m = sum_t delta_{m,t} x_{m,t}^T`` from one batched forward/backward per batch with hooks
  on that layer (every call of it, if it runs more than once per forward). It assumes the
  layer sees the samples along dim 0; it steps aside when the layer does not run as a module,
  when its input is not batched like the pool, or inside a ``batch_first=False`` module. A
  custom sequence-first model should pass ``method="func"``.
- ``"func"`` (any other matrix: conv, RNN gates, packed experts, ``in_proj`` q/k/v):
  ``vmap(grad(...))`` of a ``functional_call`` that differentiates only that parameter,
  ``batch`` samples per call.
- ``"loop"`` (when ``torch.func`` cannot run the model, e.g. in-place ops or data-dependent
  control flow): one single-sample backward pass per sample, ``torch.autograd.grad`` on that
  one parameter.

``method="auto"`` takes the first that applies. Parameter ``.grad`` fields are never touched;
modes and RNG states are restored; the model runs in eval mode.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from contextvars import ContextVar
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..models import MatrixRef, catalog, unwrap
from ..models.modes import kept_modes
from ..spectra.compute import sv_from_eig
from ..streams import PerSampleGradGram, RowGram
from .common import (ForwardFn, LossFn, LossShapeError, _batches, _device, call_model, desc_eigvalsh, kept_rng,
                     measuring, per_sample, pool_len, resolve_loss, tree_map)

log = logging.getLogger(__name__)
_OWN_PASSES: ContextVar[bool] = ContextVar("specscope_gradient_passes", default=False)


@contextlib.contextmanager
def _own_passes() -> Iterator[None]:
    token = _OWN_PASSES.set(True)
    try:
        yield
    finally:
        _OWN_PASSES.reset(token)


def in_own_passes() -> bool:
    """True while this module runs its own forward / backward passes over a pool (hooks that watch the user's
    training steps skip them)."""
    return _OWN_PASSES.get()

METHODS = ("auto", "hooks", "func", "loop")
_warned: set[tuple[str, str]] = set()


def find_matrix(model: nn.Module, matrix: str = "o", layer: int = -1, *, name: str | None = None,
                part: int | None = None, refs: Iterable[MatrixRef] | None = None) -> MatrixRef:
    """A cataloged matrix: by ``name`` (a catalog entry's name), or of kind ``matrix`` in layer ``layer``
    (negative = from the end, among the layers that have one; matrices outside the blocks are reached by
    ``name``), ``part`` choosing among several (experts, recurrent gates; default: the first).
    ``refs``: the catalog, when already built."""
    refs = list(refs) if refs is not None else catalog(model)
    if name is not None:
        hits = [r for r in refs if r.name == name]
        if not hits:
            raise ValueError(f"no cataloged matrix named {name!r}; names look like {[r.name for r in refs[:6]]}")
    else:
        cands = [r for r in refs if r.kind == matrix and r.layer >= 0]
        if not cands:
            kinds = sorted({r.kind for r in refs if r.layer >= 0})
            raise ValueError(f"no matrix of kind {matrix!r} in the model's layers (kinds there: {kinds}); "
                             "name= reaches any cataloged matrix")
        layers = sorted({r.layer for r in cands})
        if layer < -len(layers):
            raise ValueError(f"layer {layer} is out of range: {len(layers)} layers have a {matrix!r} matrix ({layers})")
        want = layers[layer] if layer < 0 else layer
        hits = [r for r in cands if r.layer == want]
        if not hits:
            raise ValueError(f"no matrix of kind {matrix!r} in layer {layer}: layers with one are {layers}")
    if part is None:
        return hits[0]
    for r in hits:
        if r.part == part:
            return r
    raise ValueError(f"no part {part} of {hits[0].name}: parts are {[r.part for r in hits]}")


class _NotHooked(Exception):
    """The hooked formula does not apply to this layer in this model."""


class _Bound(nn.Module):
    """``forward(batch) = forward_fn(model, batch)``, so ``functional_call`` can swap the model's parameter."""

    def __init__(self, model: nn.Module, run: ForwardFn):
        super().__init__()
        self.model = model
        self.run = run

    def forward(self, batch: Any) -> Any:
        return self.run(self.model, batch)


def _not_hookable(base: nn.Module, ref: MatrixRef) -> str | None:
    """Why the hooked path cannot be used for ``ref`` (None: it can)."""
    if not ref.hookable:
        return "not the weight of a linear layer"
    weight = base.get_parameter(ref.param)
    if sum(p is weight for _, p in base.named_parameters(remove_duplicate=False)) > 1:
        return "its weight is shared with another module"
    mod, path = base, ref.source.split(".") if ref.source else []
    for part in [None] + path:
        mod = mod if part is None else getattr(mod, part)
        if getattr(mod, "batch_first", True) is False:
            return "it runs inside a module with batch_first=False"
    return None


def layer_factors(ref: MatrixRef, n: int, calls: Iterable[tuple[torch.Tensor, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors of ``n`` samples' gradients of a hookable matrix: ``calls`` holds, for each call of its layer in
    one forward, the layer's input and the loss gradient at its output, batched along dim 0. Returns the inputs
    ``(n, T, d_in)`` and the output gradients ``(n, T, d_out)`` (the matrix's rows of them, ``ref.out_index``),
    every call's positions side by side, so ``g_m = sum_t delta_{m,t} x_{m,t}^T`` sums over all calls."""
    xs, ds = [], []
    for x, d in calls:
        if ref.out_index is not None:
            d = d[..., ref.out_index.to(d.device)]
        xs.append(x.detach().reshape(n, -1, x.shape[-1]))
        ds.append(d.detach().reshape(n, -1, d.shape[-1]))
    return torch.cat(xs, 1), torch.cat(ds, 1)


def _hooked_gram(base: nn.Module, ref: MatrixRef, pool: Any, run: ForwardFn, loss: LossFn, batch: int,
                 chunk: int) -> PerSampleGradGram:
    module = base.get_submodule(ref.source)
    acc = PerSampleGradGram(chunk=chunk)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def pre(_mod, args):
        torch.set_grad_enabled(True)  # build the graph only from the probed layer on
        if args and isinstance(args[0], torch.Tensor) and not args[0].requires_grad and not module.weight.requires_grad:
            return (args[0].detach().requires_grad_(),) + tuple(args[1:])  # a frozen layer: track its output anyway
        return None

    def fwd(_mod, args, out):
        calls.append((args[0] if args else None, out))

    handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(fwd)]
    try:
        for b in _batches(pool, batch, _device(base)):
            n = pool_len(b)
            total = per_sample(loss(run(base, b), b), n).sum()
            torch.set_grad_enabled(False)
            if not calls:
                raise _NotHooked("the layer did not run as a module (its weight is used directly)")
            if not total.requires_grad:
                raise _NotHooked("the loss does not depend on the layer's output")
            for x, y in calls:
                if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape[:1] != (n,) \
                        or y.shape[:1] != (n,) or not y.requires_grad:
                    raise _NotHooked("its input and output are not tensors batched like the pool")
            # d(sum_m L_m)/dy at sample m's positions = dL_m/dy; every call of the layer adds its share
            deltas = torch.autograd.grad(total, [y for _, y in calls], allow_unused=True)
            acc.update(*layer_factors(ref, n, [(x, torch.zeros_like(y) if d is None else d)
                                               for (x, y), d in zip(calls, deltas)]))
            calls.clear()
    finally:
        for h in handles:
            h.remove()
    return acc


def _take(ref: MatrixRef, g: torch.Tensor) -> torch.Tensor:
    return (ref.take(g) if ref.take is not None else g).reshape(-1)


def _func_rows(base: nn.Module, ref: MatrixRef, pool: Any, run: ForwardFn, loss: LossFn, batch: int,
               acc: RowGram) -> None:
    bound, key = _Bound(base, run), f"model.{ref.param}"

    def sample_loss(w: torch.Tensor, sample: Any) -> torch.Tensor:
        b = tree_map(lambda t: t.unsqueeze(0), sample)
        return per_sample(loss(functional_call(bound, {key: w}, (b,)), b), 1).sum()

    rows = vmap(lambda w, sample: _take(ref, grad(sample_loss)(w, sample)), in_dims=(None, 0))
    w = base.get_parameter(ref.param).detach()
    with warnings.catch_warnings():  # ops without a batching rule run in a loop inside vmap: slower, still right
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        for b in _batches(pool, batch, _device(base)):
            acc.update(rows(w, b))


def _loop_rows(base: nn.Module, ref: MatrixRef, pool: Any, run: ForwardFn, loss: LossFn, acc: RowGram) -> None:
    p = base.get_parameter(ref.param)
    bound, key = _Bound(base, run), f"model.{ref.param}"
    for b in _batches(pool, 1, _device(base)):
        with torch.enable_grad():
            if p.requires_grad:
                w, out = p, run(base, b)
            else:  # a frozen parameter: differentiate a detached copy put in its place
                w = p.detach().requires_grad_()
                out = functional_call(bound, {key: w}, (b,))
            (g,) = torch.autograd.grad(per_sample(loss(out, b), 1).sum(), [w], allow_unused=True)
        acc.update(_take(ref, torch.zeros_like(p) if g is None else g)[None])


def gradient_stream(model: nn.Module, pool: Any, matrix: str = "o", layer: int = -1, batch: int = 16, chunk: int = 16, *,
                  name: str | None = None, part: int | None = None, loss_fn: LossFn | None = None,
                  forward_fn: ForwardFn | None = None, method: str = "auto",
                  refs: Iterable[MatrixRef] | None = None) -> tuple[PerSampleGradGram | RowGram, MatrixRef]:
    """The per-sample gradients of one cataloged matrix as a mergeable stream (its ``compute()`` is the float64
    Gram ``G G^T``; two ranks' streams merge into the Gram of the union of their samples), and the matrix.

    ``pool``: a tensor or a tuple / dict of tensors batched along dim 0 (never cast).
    ``matrix`` / ``layer`` / ``part`` or ``name``: which matrix (:func:`find_matrix`).
    ``loss_fn(output, batch)``: per-sample losses, shape ``(B,)`` (default: next-token
    cross-entropy, for a pool of token ids only). ``forward_fn(model, batch)``: how to call the
    (unwrapped) model. ``batch``: samples per forward (per ``vmap`` call for ``"func"``, whose
    memory is about ``batch`` times the parameter's size); ``chunk``: samples per Gram block.
    ``method``: ``"auto"``, ``"hooks"``, ``"func"`` or ``"loop"`` (module docstring).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    base = unwrap(model)
    ref = find_matrix(base, matrix, layer, name=name, part=part, refs=refs)
    loss, run = resolve_loss(loss_fn, pool), forward_fn or call_model
    with measuring(model), _own_passes():
        if method in ("auto", "hooks"):
            why = _not_hookable(base, ref)
            if why is None:
                try:
                    return _hooked_gram(base, ref, pool, run, loss, batch, chunk), ref
                except _NotHooked as exc:
                    why = str(exc)
            if method == "hooks":
                raise ValueError(f"the hooked path does not apply to {ref.name}: {why}")
            log.debug("per-sample gradients of %s through torch.func: %s", ref.name, why)
        if method in ("auto", "func"):
            acc = RowGram(chunk)
            try:
                _func_rows(base, ref, pool, run, loss, batch, acc)
                return acc, ref
            except LossShapeError:
                raise
            except Exception as exc:
                if method == "func":
                    raise
                if (type(base).__name__, ref.name) not in _warned:
                    _warned.add((type(base).__name__, ref.name))
                    log.warning("torch.func cannot differentiate %s per sample (%s: %s); using a loop of single-sample "
                                "backward passes instead", ref.name, type(exc).__name__, exc)
        acc = RowGram(chunk)
        _loop_rows(base, ref, pool, run, loss, acc)
        return acc, ref


def gradient_gram(model: nn.Module, pool: Any, matrix: str = "o", layer: int = -1, batch: int = 16, chunk: int = 16,
                  **kwargs: Any) -> tuple[torch.Tensor, MatrixRef]:
    """Float64 Gram ``G G^T`` of the per-sample gradients of one cataloged matrix (``M x M``, squared gradient
    units), and the matrix; arguments as :func:`gradient_stream`."""
    acc, ref = gradient_stream(model, pool, matrix, layer, batch, chunk, **kwargs)
    return acc.compute(), ref


def gradient_spectrum(model: nn.Module, pool: Any, matrix: str = "o", layer: int = -1, batch: int = 16,
                      chunk: int = 16, *, name: str | None = None, part: int | None = None,
                      loss_fn: LossFn | None = None, forward_fn: ForwardFn | None = None,
                      method: str = "auto") -> np.ndarray:
    """Singular values (descending) of the per-sample gradient matrix ``G`` (M x P), ``sqrt(eigvalsh(G G^T))``.
    Arguments as :func:`gradient_gram`."""
    gram, _ = gradient_gram(model, pool, matrix, layer, batch, chunk, name=name, part=part, loss_fn=loss_fn,
                            forward_fn=forward_fn, method=method)
    return sv_from_eig(desc_eigvalsh(gram))


def gradient_spectrum_reference(model: nn.Module, pool: Any, matrix: str = "o", layer: int = -1, *,
                                name: str | None = None, part: int | None = None, loss_fn: LossFn | None = None,
                                forward_fn: ForwardFn | None = None) -> np.ndarray:
    """The loop every path must equal: one full backward pass per sample (every parameter's gradient, as a
    training step computes them; ``.grad`` fields are left alone), the probed parameter's gradient mapped by
    ``ref.take``, flattened, stacked, ``svdvals`` in float64. Arguments as :func:`gradient_gram`."""
    base = unwrap(model)
    ref = find_matrix(base, matrix, layer, name=name, part=part)
    loss, run = resolve_loss(loss_fn, pool), forward_fn or call_model
    weight = base.get_parameter(ref.param)
    params = [p for p in base.parameters() if p.requires_grad]
    at = next((i for i, p in enumerate(params) if p is weight), None)
    if at is None:
        raise ValueError(f"{ref.param} does not require grad: the reference loop differentiates trainable parameters")
    rows = []
    with kept_rng(), torch.enable_grad(), kept_modes(model, eval=True), _own_passes():
        for b in _batches(pool, 1, _device(base)):
            g = torch.autograd.grad(per_sample(loss(run(base, b), b), 1).sum(), params, allow_unused=True)[at]
            rows.append(_take(ref, torch.zeros_like(weight) if g is None else g).to(torch.float64))
    return torch.linalg.svdvals(torch.stack(rows)).cpu().numpy()

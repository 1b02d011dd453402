"""Activation covariance spectra (SPEC 1.2) on any model.

Where activations are read (a :class:`Site`):

- ``layers=[...]``: outputs of blocks of the model's block list (the longest ``ModuleList``
  named ``blocks`` / ``h`` / ``layers`` / ``layer``), indices as in Python (negative = from the
  end); an index out of range is a ``ValueError``. Stored as ``layer`` = block index, name
  ``block{i}``.
- ``modules=["features.3", "encoder.layers.1", "fc:input"]``: the output of any module by name
  (relative to the unwrapped model), or its input with a ``:input`` suffix. A tuple / dict /
  ``ModelOutput`` gives its first tensor. Stored with the module name; ``layer`` numbers the
  modules in the model's registration order (0 = the shallowest), so the deepest has the
  largest ``layer``.
- neither, in a model with a block list: the deepest block.
- neither, in a model without one (CNN, LSTM, MLP): the **input of the output head**: one
  batch is run with hooks on every leaf module, and the last leaf to run whose output is a
  floating tensor batched like the pool (the head: a classifier's or regressor's final
  ``Linear``) is taken; its input is the representation the head reads (a CNN's pooled
  features, an LSTM's hidden states). When that input is not such a tensor, the head's own
  output is used. The choice is logged; pass ``modules`` to choose.

Activations of more than 2 dims are flattened to ``(positions, features)``: ``(B, T, d)`` ->
``(B*T, d)`` (sequence models); a feature map ``(B, C, H, W)`` (or ``(B, C, D, H, W)``) ->
``(B*H*W, C)``: channels are the features, every spatial position a row. ``(B, d)`` stays.
``feature_dim`` overrides which dim holds the features (e.g. ``1`` for a ``Conv1d`` map
``(B, C, L)``, ``-1`` for a channels-last map).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..models import unwrap
from ..streams import StreamingCovariance
from .common import ForwardFn, _batches, _device, call_model, desc_eigvalsh, first_tensor, measuring, pool_len

log = logging.getLogger(__name__)

_BLOCK_LIST = re.compile(r"(?:^|\.)(?:blocks|h|layers|layer)$")
INPUT = ":input"


def block_list(model: nn.Module) -> tuple[str, list[nn.Module]] | None:
    """``(name, blocks)`` of the longest ``ModuleList`` named blocks / h / layers / layer, or None."""
    best_name, best = "", []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and _BLOCK_LIST.search(name) and len(mod) > len(best):
            best_name, best = name, list(mod)
    return (best_name, best) if best else None


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, in order: the longest ``ModuleList`` named blocks / h / layers."""
    found = block_list(model)
    if found is None:
        raise ValueError("no list of transformer blocks (blocks / h / layers) found in the model")
    return found[1]


def block_index(layer: int, n: int) -> int:
    """A Python-style block index checked against ``n`` blocks (never wrapped silently)."""
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
        raise TypeError(f"block indices are integers, got {layer!r}")
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} is out of range: the model has {n} blocks (valid indices {-n}..{n - 1})")
    return int(layer) % n


@dataclass(frozen=True)
class Site:
    """Where activations are read: stored ``layer`` and ``name``; ``module`` (relative to the unwrapped
    model) and whether its ``input`` (else its output) is read."""

    layer: int
    name: str
    module: str
    input: bool = False


def activation_sites(model: nn.Module, layers: Iterable[int] | None = None,
                     modules: Iterable[str] | None = None) -> list[Site] | None:
    """The sites ``layers`` / ``modules`` name (checked), or None when the default module must be found by
    running the model (no block list, neither given: :func:`default_site`)."""
    base = unwrap(model)
    if layers is not None and modules is not None:
        raise ValueError("pass either layers (block indices) or modules (module names), not both")
    if modules is not None:
        return _module_sites(base, [modules] if isinstance(modules, str) else list(modules))
    found = block_list(base)
    if layers is None:
        if found is None:
            return None
        layers = (-1,)
    if found is None:
        raise ValueError(f"layers= indexes a block list (a ModuleList named blocks / h / layers / layer) and "
                         f"{type(base).__name__} has none: pass modules=[...] (module names), or neither "
                         "for the default")
    name, blocks = found
    return [Site(i, f"block{i}", f"{name}.{i}") for i in sorted({block_index(l, len(blocks)) for l in layers})]


def _module_sites(base: nn.Module, specs: list[str]) -> list[Site]:
    if not specs:
        raise ValueError("modules= is empty")
    order = {id(m): i for i, m in enumerate(base.modules())}
    keyed = []
    for spec in dict.fromkeys(specs):
        if not isinstance(spec, str):
            raise TypeError(f"module names are strings, got {spec!r}")
        name, inp = (spec[: -len(INPUT)], True) if spec.endswith(INPUT) else (spec, False)
        try:
            mod = base.get_submodule(name)
        except AttributeError:
            raise ValueError(f"no module named {name!r} in {type(base).__name__}") from None
        keyed.append(((order[id(mod)], not inp), spec, name, inp))
    keyed.sort(key=lambda k: k[0])
    return [Site(rank, spec, name, inp) for rank, (_, spec, name, inp) in enumerate(keyed)]


def _batched(t: torch.Tensor | None, n: int) -> bool:
    return t is not None and t.is_floating_point() and t.ndim >= 1 and t.shape[0] == n


def _input_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    t = first_tensor(args)
    return t if t is not None else first_tensor(kwargs)


def default_site(model: nn.Module, pool: Any, forward_fn: ForwardFn | None = None, batch: int = 16) -> Site:
    """The input of the output head of a model without a block list (see the module docstring), logged."""
    base = unwrap(model)
    sample = next(_batches(pool, batch, _device(base)))
    n = pool_len(sample)
    ran: list[tuple[str, bool]] = []  # leaves whose output is batched like the pool: (name, input also is)

    def hook(name: str):
        def fn(_mod, args, kwargs, out):
            if _batched(first_tensor(out), n):
                ran.append((name, _batched(_input_tensor(args, kwargs), n)))
        return fn

    handles = [m.register_forward_hook(hook(name), with_kwargs=True) for name, m in base.named_modules()
               if next(m.children(), None) is None]
    try:
        with measuring(model):
            (forward_fn or call_model)(base, sample)
    finally:
        for h in handles:
            h.remove()
    if not ran:
        raise ValueError(f"no module of {type(base).__name__} produced a float tensor batched like the pool; "
                         "pass modules=[...] to say where to read activations")
    name, inp = ran[-1]
    site = Site(0, name + INPUT if inp else name, name, inp)
    log.info("activations of %s (no block list): reading the %s of module %r, the last module to produce a float "
             "tensor batched like the pool; pass modules=[...] to choose", type(base).__name__,
             "input" if inp else "output", name)
    return site


def flatten_features(h: torch.Tensor, feature_dim: int | None = None) -> torch.Tensor:
    """``(positions, features)``: ``(B, T, d) -> (B*T, d)``; ``(B, C, H, W) -> (B*H*W, C)``; ``(B, d)`` stays."""
    if h.ndim == 0:
        raise ValueError("a 0-d activation has no batch dim")
    if h.ndim == 1:
        return h.reshape(-1, 1)
    fd = feature_dim if feature_dim is not None else (1 if h.ndim >= 4 else -1)
    h = h.movedim(fd, -1)
    return h.reshape(-1, h.shape[-1])


def rms_normalize(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``h`` in float64 with each feature vector (last dim) divided by its root mean square (``eps`` added to
    the mean square): unit-RMS activations, same shape."""
    h = h.to(torch.float64)
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def activation_covariances(model: nn.Module, pool: Any, layers: Iterable[int] | None = None, normalize: str = "rms",
                           batch: int = 16, *, modules: Iterable[str] | None = None,
                           forward_fn: ForwardFn | None = None,
                           feature_dim: int | None = None) -> dict[Site, StreamingCovariance]:
    """Streaming float64 covariances of the activations at each site, over the pool.

    ``pool``: a tensor or a tuple / dict of tensors batched along dim 0 (never cast, see
    :mod:`specscope.measure.common`). ``layers``: block indices; ``modules``: module names
    (``"name:input"`` for a module's input); neither: the deepest block, or the default module of
    a model without blocks (module docstring). ``normalize``: ``"rms"`` (each row divided by its
    RMS over the features, Spectral Lens' choice) or ``"none"``. ``forward_fn(model, batch)``:
    how to call the (unwrapped) model. ``feature_dim``: which dim of an activation holds the
    features (default: the last for 2-D / 3-D, dim 1 for 4-D / 5-D feature maps).
    """
    if normalize not in ("rms", "none"):
        raise ValueError("normalize must be 'rms' or 'none'")
    base = unwrap(model)
    run = forward_fn or call_model
    sites = activation_sites(base, layers, modules) or [default_site(base, pool, forward_fn, batch)]
    covs: dict[Site, StreamingCovariance] = {}
    handles = hook_sites(base, sites, covs, normalize, feature_dim)
    try:
        with measuring(model):
            for b in _batches(pool, batch, _device(base)):
                run(base, b)
    finally:
        for h in handles:
            h.remove()
    return sites_read(sites, covs)


def hook_sites(base: nn.Module, sites: list[Site], covs: dict[Site, StreamingCovariance], normalize: str = "rms",
               feature_dim: int | None = None) -> list[Any]:
    """Hooks on ``base`` (the unwrapped model) that add every activation at ``sites`` (detached, flattened
    to ``(positions, features)``, RMS-normalized when ``normalize="rms"``) to ``covs[site]`` (a float64
    :class:`StreamingCovariance`, made at the first batch); returns the handles to remove."""
    def add(site: Site, t: torch.Tensor | None) -> None:
        if t is None:
            raise TypeError(f"no tensor in the {'input' if site.input else 'output'} of module {site.module!r}")
        h = flatten_features(t.detach(), feature_dim)
        h = rms_normalize(h) if normalize == "rms" else h
        if site not in covs:
            covs[site] = StreamingCovariance(h.shape[-1], device=h.device)
        covs[site].update(h)

    handles = []
    for site in sites:
        mod = base.get_submodule(site.module)
        if site.input:
            handles.append(mod.register_forward_pre_hook(lambda _m, a, k, s=site: add(s, _input_tensor(a, k)),
                                                         with_kwargs=True))
        else:
            handles.append(mod.register_forward_hook(lambda _m, _a, out, s=site: add(s, first_tensor(out))))
    return handles


def sites_read(sites: list[Site], covs: dict[Site, StreamingCovariance]) -> dict[Site, StreamingCovariance]:
    """``covs`` ordered by layer; a ``RuntimeError`` when a site's module did not run in the forward pass."""
    missing = [s.name for s in sites if s not in covs]
    if missing:
        raise RuntimeError(f"module(s) {missing} did not run in the forward pass")
    return dict(sorted(covs.items(), key=lambda kv: kv[0].layer))


def activation_spectrum(model: nn.Module, pool: Any, layer: int | None = None, normalize: str = "rms", batch: int = 16,
                        *, module: str | None = None, forward_fn: ForwardFn | None = None,
                        feature_dim: int | None = None) -> np.ndarray:
    """Covariance eigenvalues (descending) at one site: block ``layer``, or ``module`` (a module name), or the
    default (the deepest block; a model without blocks: see the module docstring)."""
    covs = activation_covariances(model, pool, None if layer is None else (layer,), normalize, batch,
                                  modules=None if module is None else (module,), forward_fn=forward_fn,
                                  feature_dim=feature_dim)
    return desc_eigvalsh(next(iter(covs.values())).compute())

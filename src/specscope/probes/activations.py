"""Spectral Lens probes: activation covariance spectra and per-sample gradient spectra (this module: the
pool, the spectrum emitter and :class:`Activations`; :mod:`.gradients`: :class:`Gradients`).

Both measure a fixed probe pool: the same samples at every measurement (and across runs, when
built with the same seed from the same data). A pool is a tensor (token ids, float pixels,
audio, features) or a tuple / dict of tensors batched along dim 0; it is never cast (token ids
are sent as int64). They work on any model: ``forward_fn(model, batch)`` says how to call it,
``loss_fn(output, batch)`` gives the per-sample losses of :class:`Gradients` (see
:mod:`specscope.measure`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable

import numpy as np
import torch

from .. import measure
from ..errors import ConfigError
from ..measure.common import ForwardFn, as_pool, pool_len, pool_shapes, tree_map
from ..models import unwrap
from ..spectra import spectrum_metrics
from ..spectra.compute import sv_from_eig
from .base import Measurement, Probe, ProbeContext, check_choice, check_int
from .sharding import pool_streams
from .schedule import ScheduleLike


def make_pool(data: Any, n: int = 64, seq_len: int = 128, seed: int = 0) -> Any:
    """A fixed, seeded probe pool.

    ``data`` 1-D (a token stream): ``n`` windows of ``seq_len`` tokens at seeded positions, int64.
    Anything else (samples batched along dim 0: an ``N x ...`` tensor or array, a tuple / dict of
    them): ``n`` seeded samples drawn without replacement, in data order, dtype kept (``seq_len``
    is not used).
    """
    if isinstance(data, (tuple, Mapping)) or (hasattr(data, "ndim") and data.ndim != 1):
        data = as_pool(data)
        total = pool_len(data)
        idx = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        rows = torch.from_numpy(idx)
        return tree_map(lambda t: t[rows.to(t.device)], data)
    arr = np.asarray(data)
    if len(arr) < seq_len + 1:
        raise ConfigError(f"the probe pool needs more than {seq_len} tokens (seq_len), got {len(arr)}: "
                          "use a larger corpus or a shorter sequence length")
    starts = np.random.default_rng(seed).integers(0, len(arr) - seq_len, size=n)
    return torch.from_numpy(np.stack([arr[s : s + seq_len] for s in starts]).astype(np.int64))


def _check_callable(what: str, fn: Any) -> None:
    """``fn`` is None or callable, else a :class:`ConfigError`."""
    if fn is not None and not callable(fn):
        raise ConfigError(f"{what} must be callable (or None), got {fn!r}")


def _emit(out: Measurement, layer: int, kind: str, name: str, quantity: str, values: np.ndarray,
          part: int = -1) -> None:
    """Full spectrum plus the SPEC section 3 metrics (``values``: singular values or eigenvalues)."""
    sv = sv_from_eig(values) if quantity == "eig" else values
    status = "ok" if np.isfinite(values).all() else "non-finite spectrum"
    out.add_spectrum(layer, kind, name, quantity, values, status, part)
    table = spectrum_metrics(sv[None, :], mle=False)
    for metric, vals in table.values.items():
        out.add_metric(layer, kind, name, metric, float(vals[0]), str(table.status[metric][0]), part)


class Activations(Probe):
    """Covariance spectrum of activations over the pool (SPEC 1.2).

    Where (see :mod:`specscope.measure.activations`): ``layers`` (block indices, checked at
    setup: out of range is a ``ValueError``) or ``modules`` (module names, ``"name:input"`` for
    a module's input), not both; neither: the deepest block, or, in a model without a block
    list, the input of its output head (found once by running one batch, and logged).
    ``normalize``: ``"rms"`` (default) or ``"none"``. ``forward_fn(model, batch)``: how to call
    the model (default ``model(batch)`` / ``model(*batch)`` / ``model(**batch)``).
    ``feature_dim``: which dim of an activation holds the features (default: the last of a
    2-D / 3-D activation, dim 1 (channels) of a 4-D / 5-D feature map). Stored rows: kind
    ``activation``, ``layer`` = block index (or the modules' depth order), ``name`` =
    ``block{i}`` or the module name. ``every`` / ``at``: the schedule (:class:`~.base.Probe`). Needs
    ``pool_forward``: due at one step with a :class:`~.gradients.Gradients` over the same pool,
    it is measured in that probe's forward pass (:mod:`specscope.measure.shared`).
    """

    name = "activations"
    needs = frozenset({"pool_forward"})

    def __init__(self, pool: Any, layers: Iterable[int] | None = None, every: ScheduleLike = 100, at: Iterable[int] = (),
                 normalize: str = "rms", batch: int = 16, name: str | None = None, *,
                 modules: Iterable[str] | str | None = None, forward_fn: ForwardFn | None = None,
                 feature_dim: int | None = None):
        super().__init__(every, at, name)
        self.pool = as_pool(pool)
        pool_len(self.pool)
        if layers is not None and modules is not None:
            raise ConfigError("Activations: pass either layers (block indices) or modules (module names), not both")
        self.layers = None if layers is None else tuple(layers)
        if self.layers is not None and not all(isinstance(l, (int, np.integer)) and not isinstance(l, bool) for l in self.layers):
            raise ConfigError(f"Activations: layers are block indices (integers), got {self.layers}")
        self.modules = None if modules is None else (modules,) if isinstance(modules, str) else tuple(modules)
        if self.modules is not None and not all(isinstance(m, str) and m for m in self.modules):
            raise ConfigError(f"Activations: modules are module names (non-empty strings), got {self.modules}")
        self.normalize = check_choice("Activations: normalize", normalize, ("rms", "none"))
        self.batch = check_int("Activations: batch", batch, 1)
        if feature_dim is not None and (isinstance(feature_dim, bool) or not isinstance(feature_dim, (int, np.integer))):
            raise ConfigError(f"Activations: feature_dim must be an integer (a dim) or None, got {feature_dim!r}")
        _check_callable("Activations: forward_fn", forward_fn)
        self.forward_fn, self.feature_dim = forward_fn, feature_dim
        self._default: tuple[int, str] | None = None  # (id of the model, module found by running it)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layers": None if self.layers is None else list(self.layers),
                "modules": None if self.modules is None else list(self.modules), "pool": pool_shapes(self.pool),
                "normalize": self.normalize}

    def setup(self, model: torch.nn.Module) -> None:
        measure.activation_sites(model, self.layers, self.modules)  # raises on an index out of range, a bad name

    def _modules(self, model: torch.nn.Module) -> tuple[str, ...] | None:
        if self.layers is not None or self.modules is not None or measure.activation_sites(model) is not None:
            return self.modules
        base = unwrap(model)
        if self._default is None or self._default[0] != id(base):
            self._default = (id(base), measure.default_site(base, self.pool, self.forward_fn, self.batch).name)
        return (self._default[1],)

    def request(self, model: torch.nn.Module) -> measure.ActivationRequest:
        """Where this probe reads in ``model`` (its default module found first, for a model without blocks)."""
        return measure.ActivationRequest(self.layers, self._modules(model), self.normalize, self.feature_dim)

    def measure(self, ctx: ProbeContext) -> Measurement:
        """Covariance eigenvalues (descending) and their metrics at each site, from one pass over the pool (in a
        distributed job, each rank's share of the pool's batches, their covariances merged and written by rank 0)."""
        modules = self._modules(ctx.model)

        def run(pool: Any) -> dict:
            return measure.activation_covariances(ctx.model, pool, self.layers, self.normalize, self.batch,
                                                  modules=modules, forward_fn=self.forward_fn,
                                                  feature_dim=self.feature_dim)

        if ctx.dist is None:
            return self.rows(run(self.pool))
        covs = pool_streams(ctx, self.pool, self.batch, f"{self.name}@{ctx.step}", run)
        return self.rows(covs) if covs is not None else Measurement()

    def rows(self, covs: dict[measure.Site, Any]) -> Measurement:
        """The stored rows of covariances ``{site: StreamingCovariance}``: eigenvalues (kind ``activation``)."""
        out = Measurement()
        for site, cov in covs.items():
            _emit(out, site.layer, "activation", site.name, "eig", measure.desc_eigvalsh(cov.compute()))
        return out

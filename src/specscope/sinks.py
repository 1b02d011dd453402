"""Sinks: where the monitor hands each measurement besides its run store (TensorBoard, W&B, MLflow, or an object of
the user's own).

**The protocol** (:class:`Sink`) is three methods: ``write(step, probe, measurement)``, called after each
measurement the monitor writes to its run store (``step``: the monitor's step, the one the user's own logs use;
``probe``: the probe's name; ``measurement``: the :class:`~specscope.store.rows.Measurement` just written),
``flush()`` when the monitor flushes, ``close()`` when it closes. Any object with these three methods is a sink:
``Monitor(model, dir, log_to=[obj])``.

**Names and foreign objects** (``"tensorboard"``, a ``SummaryWriter``, a W&B run, an MLflow run, or ``(name,
options)``) become sinks through a registry: a backend registers a factory under its name with :func:`register`,
with a test saying which foreign objects it takes. The exporters of ``specscope.export`` (a layer above this one)
register themselves when that package is imported; this layer never imports them. On the first name or object it
cannot resolve, the registry imports the provider packages the package root lists (``specscope._SINK_PROVIDERS``),
the one place that wires the layers together, as ``specscope._LAZY`` does for the public names.

**A sink never breaks the training**: :func:`open_sinks` wraps each one in :class:`Guarded`, which logs the
sink's first failure as a warning naming the sink and the reason (later ones at DEBUG) and goes on.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, runtime_checkable

from .errors import ConfigError

if TYPE_CHECKING:
    from .store.rows import Measurement

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """What the monitor calls on each place it exports to (see the module docstring)."""

    def write(self, step: int, probe: str, measurement: "Measurement") -> None:
        """Take the measurement ``probe`` made at ``step``; returns None."""

    def flush(self) -> None:
        """Make what was written visible (to disk, to the service); returns None."""

    def close(self) -> None:
        """Flush and release what the sink opened itself (never what the user handed it); returns None."""


@dataclass(frozen=True)
class Backend:
    """A registered backend: its ``name``, ``make(target=None, *, run_dir, run_name, config, **options) -> Sink``
    (``target``: a foreign object ``accepts`` took, else None for the name alone) and ``accepts(obj) -> bool``."""

    name: str
    make: Callable[..., Sink]
    accepts: Callable[[Any], bool]


_BACKENDS: dict[str, Backend] = {}


def register(name: str, make: Callable[..., Sink], accepts: Callable[[Any], bool] = lambda obj: False) -> None:
    """Register (or replace) the backend ``name``: ``log_to=[name]`` and ``log_to=[(name, options)]`` call
    ``make(None, run_dir=..., run_name=..., config=..., **options)`` (an option overrides the context of the same
    name); a foreign object for which ``accepts(obj)`` is true calls ``make(obj, run_dir=..., run_name=...,
    config=...)``. Returns None."""
    _BACKENDS[name] = Backend(name, make, accepts)


def _load_providers() -> None:
    """Import the packages that register backends, as the package root lists them."""
    from . import _SINK_PROVIDERS

    for module in _SINK_PROVIDERS:
        importlib.import_module(module)


def backends() -> list[str]:
    """The names of the registered backends (the providers loaded first), sorted: a list of str."""
    _load_providers()
    return sorted(_BACKENDS)


def is_sink(obj: Any) -> bool:
    """Whether ``obj`` has the sink protocol's three methods (``write``, ``flush``, ``close``)."""
    return all(callable(getattr(obj, m, None)) for m in ("write", "flush", "close"))


def resolve(spec: Any, **context: Any) -> Sink:
    """The sink for one ``log_to`` entry: a sink as it is; a backend name; ``(name, options)`` (a dict of the
    backend's options); or a foreign object a backend accepts. ``context``: ``run_dir``, ``run_name`` (the run id), ``config`` of
    the run being exported. An entry no backend takes is a :class:`ConfigError`."""
    if is_sink(spec):
        return spec
    name, options, target = None, {}, None
    if isinstance(spec, str):
        name = spec
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        name, options = spec
    known = name in _BACKENDS if name is not None else any(b.accepts(spec) for b in _BACKENDS.values())
    if not known:
        _load_providers()
    if name is not None:
        if name not in _BACKENDS:
            raise ConfigError(f"log_to: unknown backend {name!r} (known: {', '.join(sorted(_BACKENDS))}, or an object "
                              "with write/flush/close)")
        backend = _BACKENDS[name]
    else:
        backend = next((b for b in _BACKENDS.values() if b.accepts(spec)), None)
        if backend is None:
            raise ConfigError(f"log_to: no backend takes a {type(spec).__name__} (give a name of "
                              f"{', '.join(sorted(_BACKENDS))}, a SummaryWriter, a W&B run, an MLflow run, or an "
                              "object with write/flush/close)")
        target = spec
    try:
        return backend.make(target, **{**context, **options})
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"log_to: {backend.name} could not be opened: {type(exc).__name__}: {exc}") from exc


class Guarded:
    """A sink that never raises: each call goes to ``sink``; a failure is logged (a warning the first time, naming
    ``label`` and the reason; DEBUG after) and the training goes on."""

    def __init__(self, sink: Sink, label: str):
        self.sink = sink
        self.label = label
        self._failed = False

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self.sink, method)(*args)
        except Exception as exc:  # never break the user's training
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            log.log(level, "specscope: export to %s: %s failed: %s: %s%s", self.label, method, type(exc).__name__, exc,
                    "" if level == logging.DEBUG else " (training goes on; said once)")

    def write(self, step: int, probe: str, measurement: "Measurement") -> None:
        """``sink.write``, logging instead of raising; returns None."""
        self._call("write", step, probe, measurement)

    def flush(self) -> None:
        """``sink.flush``, logging instead of raising; returns None."""
        self._call("flush")

    def close(self) -> None:
        """``sink.close``, logging instead of raising; returns None."""
        self._call("close")


def open_sinks(specs: Iterable[Any], **context: Any) -> list[Guarded]:
    """Every ``log_to`` entry resolved (:func:`resolve`) and guarded, in order: a list of :class:`Guarded`. An entry
    that cannot be resolved is a :class:`ConfigError`; the sinks opened before it are closed first."""
    opened: list[Guarded] = []
    try:
        for spec in specs or ():
            sink = resolve(spec, **context)
            opened.append(Guarded(sink, spec if isinstance(spec, str) else type(sink).__name__))
    except Exception:
        for s in opened:
            s.close()
        raise
    return opened

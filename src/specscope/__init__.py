"""specscope: watch the spectra of a neural network while it trains.

Public surface (imported lazily, so ``import specscope`` does no work)::

    import specscope as ss
    ss.Monitor, ss.probes.Weights, ss.open_run, ss.describe, ss.query, ss.analyze,
    ss.trajectory, ss.findings, ss.prune.pruning_study, ss.forecast, ss.align, ss.export.export_run

This module is also where the layers are wired together: ``_LAZY`` maps the public names to their modules, and
``_SINK_PROVIDERS`` names the packages whose backends the monitor's sink registry (``specscope.sinks``, a lower
layer that imports none of them) loads on the first ``log_to`` name it does not know.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Monitor": ("specscope.monitor", "Monitor"),
    "open_run": ("specscope.store.reader", "open_run"),
    "Run": ("specscope.store.reader", "Run"),
    "describe": ("specscope.spectra", "describe"),
    "analyze": ("specscope.offline", "analyze"),
    "trajectory": ("specscope.offline", "trajectory"),
    "findings": ("specscope.analysis.findings", "findings"),
    "forecast": ("specscope.analysis.lens", "forecast"),
    "align": ("specscope.analysis.lens", "align"),
    "prune": ("specscope.experiments.pruning", None),
    "measure": ("specscope.measure", None),
    "query": ("specscope.store.query", "query"),
    "catalog": ("specscope.models", "catalog"),
    "write_report": ("specscope.report", "write_report"),
    "export": ("specscope.export", None),
    "SpecscopeError": ("specscope.errors", "SpecscopeError"),
    "probes": ("specscope.probes", None),
    "spectra": ("specscope.spectra", None),
    "streams": ("specscope.streams", None),
}

# packages that register ``log_to`` backends into specscope.sinks when imported
_SINK_PROVIDERS = ("specscope.export",)

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'specscope' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

"""Weights & Biases: specscope's metrics as logged values and its stored spectra as ``wandb.Histogram``s (needs the
``wandb`` package: ``pip install 'specscope[wandb]'``; works offline with ``WANDB_MODE=offline``).

    ss.Monitor(model, "runs/a", probes=[...], log_to=["wandb"])    # the active run (wandb.run), else a new one
    ss.Monitor(model, "runs/a", probes=[...], log_to=[run])        # a run of the user's (wandb.init(...))

**The step axis.** W&B's own ``_step`` counts ``log`` calls and must only grow, so specscope cannot log at the
monitor's step without breaking (or being dropped from) the user's own logging. Each specscope key is therefore
defined (``define_metric``) against a step metric of its own, ``specscope/step``, logged with it and equal to the
monitor's step, the step of the user's logs: charts of specscope's keys have the training step as their x-axis.
Every :meth:`WandbSink.emit` is one ``log`` call (one row of W&B history). A run the sink started is finished by
:meth:`WandbSink.close`; the user's run is left open.

Tags: :mod:`specscope.export.common`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..sinks import register
from .common import PREFIX, Exporter

STEP = f"{PREFIX}/step"


def _wandb() -> Any:
    """The ``wandb`` module, or a :class:`ConfigError` when it is missing."""
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError(f"W&B export needs the wandb package ({exc}): pip install 'specscope[wandb]'") from None
    return wandb


class WandbSink(Exporter):
    """Export into the W&B run ``run`` (the user's; left open), else the active run ``wandb.run`` (unless ``active``
    is False), else a run the sink starts with ``wandb.init(**init)`` (finished by :meth:`close`). ``num_bins``: bins
    of each histogram."""

    def __init__(self, run: Any = None, num_bins: int = 64, active: bool = True, **init: Any):
        self.wandb = _wandb()
        if run is None and active:
            run = self.wandb.run
        if run is None:
            run = self.wandb.init(**init)
            self.owns = True
        self.run = run
        self.num_bins = int(num_bins)
        self._defined: set[str] = set()

    @staticmethod
    def accepts(obj: Any) -> bool:
        """Whether ``obj`` is a W&B run (an object of the ``wandb`` package with ``log`` and ``define_metric``)."""
        return (type(obj).__module__.split(".")[0] == "wandb" and callable(getattr(obj, "log", None))
                and callable(getattr(obj, "define_metric", None)))

    @classmethod
    def make(cls, target: Any = None, *, run_name: str | None = None, config: dict | None = None, run_dir: Any = None,
             **options: Any) -> "WandbSink":
        """The sink of ``log_to=["wandb"]`` (the active run, else a new one in project ``options["project"]``,
        default ``specscope``, named after the specscope run, with its config; other ``options`` go to
        ``wandb.init``) or of a run ``target``: a :class:`WandbSink`."""
        if target is not None:
            return cls(run=target)
        options.setdefault("project", PREFIX)
        options.setdefault("name", run_name)
        options.setdefault("config", config)
        return cls(**options)

    def emit(self, step: int, scalars: dict[str, float], histograms: dict[str, np.ndarray]) -> None:
        """One ``run.log`` of the tags (histograms as ``wandb.Histogram``) with ``specscope/step = step``, each new tag
        first defined against that step metric; returns None."""
        row: dict[str, Any] = dict(scalars)
        for tag, values in histograms.items():
            row[tag] = self.wandb.Histogram(values, num_bins=min(self.num_bins, max(1, values.size)))
        new = [t for t in row if t not in self._defined]
        if new:
            if STEP not in self._defined:
                self.run.define_metric(STEP, hidden=True)
                self._defined.add(STEP)
            for t in new:
                self.run.define_metric(t, step_metric=STEP)
                self._defined.add(t)
        self.run.log({STEP: int(step), **row})

    def close(self) -> None:
        """Finish the run when the sink started it; returns None (the user's run is left open)."""
        if self.owns:
            self.run.finish()


register("wandb", WandbSink.make, WandbSink.accepts)

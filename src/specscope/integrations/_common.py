"""What the framework callbacks share: open the monitor, drive it once per optimizer step, close it.

The callbacks call the monitor the way a plain loop does: ``Monitor.step(0)`` on the model
before training (so every-step probes such as :class:`~specscope.probes.Trajectory` record the
initial parameters and see the first update), then ``Monitor.step(s)`` right after optimizer
step ``s`` (``s = 1, 2, ...``; micro-batches of gradient accumulation are not steps). Every
probe schedule therefore runs as in ``mon.step(step, ...)`` after each ``opt.step()``.

In a distributed job every rank opens its monitor and steps it at every optimizer step (the hooks
used run on every rank), so the probes' collectives line up; the monitor itself makes rank 0 the
only writer. A model sharded by FSDP1 (``FullyShardedDataParallel``: flattened parameters, no
matrix to read) is not measured: the monitor warns once, and each probe records NaN with a
status naming FSDP1 at the first step it is due.

Where the framework's own logs go, specscope's numbers go too (the monitor's ``log_to``, at the same steps): each
callback names the framework's TensorBoard / W&B / MLflow destinations as ``log_to`` entries, resolved by the
monitor through :mod:`specscope.sinks` (this layer sits below ``specscope.export`` and never imports it).
``log_to=[...]`` given to the callback replaces them (``[]``: nowhere but the run store).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from torch import nn

from ..monitor import Monitor, scalar
from ..probes import Probe, Weights

log = logging.getLogger(__name__)


def scalars_of(logged: Mapping[str, Any]) -> dict[str, float]:
    """The entries of a framework's logged-metrics mapping that are single numbers: a dict name -> float."""
    return {k: s for k, v in logged.items() if (s := scalar(v)) is not None}


class MonitorDriver:
    """Mixin for the callbacks: one :class:`Monitor` per process (every rank of a distributed job; rank 0 writes),
    stepped once per optimizer step.

    ``probes`` defaults to ``[Weights(every=every)]``. ``log_to``: the monitor's ``log_to`` (default None: where
    the framework logs, as the callback finds it). Nothing here raises into the training loop once the monitor is
    open: a failing call is logged and training goes on.
    """

    def __init__(self, run_dir: str | os.PathLike | None = None, probes: Iterable[Probe] | None = None,
                 every: int = 25, log_to: Iterable[Any] | None = None):
        self.run_dir = run_dir
        self.log_to = list(log_to) if log_to is not None else None
        self.probes: list[Probe] = list(probes) if probes is not None else [Weights(every=every)]
        self.monitor: Monitor | None = None
        self._last_step: int | None = None

    def _open_monitor(self, model: nn.Module, default_dir: str | os.PathLike, config: dict, step: int,
                      tokens: int | None = None, log_to: Iterable[Any] = ()) -> None:
        """Start the monitor (on every rank of a distributed job: a collective), exporting to ``log_to`` (the
        framework's destinations) unless the callback was given its own; at ``step == 0`` (a fresh run) record the
        initial model as step 0. At ``step > 0`` the framework resumed from a checkpoint: the monitor appends to the
        run store. Returns None."""
        run_dir = Path(self.run_dir) if self.run_dir is not None else Path(default_dir) / "specscope"
        self.monitor = Monitor(model, run_dir, probes=self.probes, config=config, resume=step > 0,
                               log_to=self.log_to if self.log_to is not None else list(log_to))
        self._last_step = int(step)
        if step == 0:
            self._call("step", 0, tokens=tokens)

    def _step_monitor(self, step: int, loss: Any = None, tokens: int | None = None, **scalars: Any) -> None:
        """``Monitor.step`` for optimizer step ``step``; a step already recorded is skipped."""
        if self.monitor is None or step == self._last_step:
            return
        self._last_step = int(step)
        self._call("step", step, loss=loss, tokens=tokens, **scalars)

    def _log_monitor(self, step: int, tokens: int | None = None, **scalars: Any) -> None:
        """``Monitor.log``: scalars only, no probe."""
        if self.monitor is not None and scalars:
            self._call("log", step, tokens=tokens, **scalars)

    def _close_monitor(self) -> None:
        """Flush and close the run store (idempotent)."""
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None

    def _call(self, method: str, step: int, **kwargs: Any) -> None:
        """``monitor.<method>(step, **kwargs)``, logging instead of raising."""
        try:
            getattr(self.monitor, method)(int(step), **kwargs)
        except Exception as exc:  # never break the user's training
            log.error("specscope monitor %s at step %s failed: %s", method, step, exc)

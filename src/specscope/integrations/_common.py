"""What the framework callbacks share: open the monitor, drive it once per optimizer step, close it.

The callbacks call the monitor the way a plain loop does: ``Monitor.step(0)`` on the model
before training (so every-step probes such as :class:`~specscope.probes.Trajectory` record the
initial parameters and see the first update), then ``Monitor.step(s)`` right after optimizer
step ``s`` (``s = 1, 2, ...``; micro-batches of gradient accumulation are not steps). Every
probe schedule therefore runs as in ``mon.step(step, ...)`` after each ``opt.step()``.

In a distributed job every rank opens its monitor and steps it at every optimizer step (the hooks
used run on every rank), so the probes' collectives line up; the monitor itself makes rank 0 the
only writer. A model sharded by FSDP1 (``FullyShardedDataParallel``: flattened parameters, no
matrix to read) is refused rather than measured: one warning, and each probe records NaN with a
status naming FSDP1 at the first step it is due.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from torch import nn

from ..monitor import Monitor, scalar
from ..probes import Probe, Weights
from ..probes.base import Measurement, ProbeContext

log = logging.getLogger(__name__)


def scalars_of(logged: Mapping[str, Any]) -> dict[str, float]:
    """The entries of a framework's logged-metrics mapping that are single numbers: a dict name -> float."""
    return {k: s for k, v in logged.items() if (s := scalar(v)) is not None}


FSDP1 = ("not measured under FSDP1 (FullyShardedDataParallel): its flattened, sharded parameters hold no matrix to "
         "read; use FSDP2 (fully_shard) or DDP")


def fsdp1_sharded(*models: nn.Module | None) -> bool:
    """True when any of ``models`` is, holds, or was flattened by FSDP1: a ``FullyShardedDataParallel`` module, or a
    parameter FSDP1 marked as flattened (its ``_fsdp_flattened`` flag). FSDP2 (``fully_shard``) is not FSDP1."""
    for model in models:
        if model is None:
            continue
        if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
            return True
        if any(getattr(p, "_fsdp_flattened", False) for p in model.parameters()):
            return True
    return False


class Refused(Probe):
    """Stands in for ``probe`` on a model it cannot measure: due at the first step ``probe`` is due, and then its
    measurement fails with ``why`` (the monitor records NaN and the reason, once); ``describe()`` is ``probe``'s
    plus ``refused: why``."""

    def __init__(self, probe: Probe, why: str):
        super().__init__(every=0, name=probe.name)
        self.probe, self.why = probe, why
        self._told = False

    def due(self, step: int) -> bool:
        """True at the first step at which ``probe`` would measure (the failure is recorded there), False after."""
        if self._told or not self.probe.due(step):
            return False
        self._told = True
        return True

    def measure(self, ctx: ProbeContext) -> Measurement:
        """Never a measurement: raises RuntimeError(``why``)."""
        raise RuntimeError(self.why)

    def describe(self) -> dict[str, Any]:
        """``probe.describe()`` with ``refused``: why it does not measure (a str)."""
        return {**self.probe.describe(), "refused": self.why}


class MonitorDriver:
    """Mixin for the callbacks: one :class:`Monitor` per process (every rank of a distributed job; rank 0 writes),
    stepped once per optimizer step.

    ``probes`` defaults to ``[Weights(every=every)]``. Nothing here raises into the training
    loop once the monitor is open: a failing call is logged and training goes on.
    """

    def __init__(self, run_dir: str | os.PathLike | None = None, probes: Iterable[Probe] | None = None,
                 every: int = 25):
        self.run_dir = run_dir
        self.probes: list[Probe] = list(probes) if probes is not None else [Weights(every=every)]
        self.monitor: Monitor | None = None
        self._last_step: int | None = None

    def _open_monitor(self, model: nn.Module, default_dir: str | os.PathLike, config: dict, step: int,
                      tokens: int | None = None, wrapped: nn.Module | None = None) -> None:
        """Start the monitor (on every rank of a distributed job: a collective); at ``step == 0`` (a fresh run)
        record the initial model as step 0. At ``step > 0`` the framework resumed from a checkpoint: the monitor
        appends to the run store. ``wrapped``: the model as the framework wrapped it, when that is another module
        (checked for FSDP1 with ``model``). Returns None."""
        run_dir = Path(self.run_dir) if self.run_dir is not None else Path(default_dir) / "specscope"
        probes, catalog = self.probes, None
        if fsdp1_sharded(model, wrapped):  # no matrix to read: every probe says why, nothing is measured
            log.warning("specscope: %s; each probe records NaN with this reason once", FSDP1)
            probes, catalog = [Refused(p, FSDP1) for p in self.probes], []
        self.monitor = Monitor(model, run_dir, probes=probes, config=config, resume=step > 0, catalog=catalog)
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

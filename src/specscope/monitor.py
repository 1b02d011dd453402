"""The monitor: when to measure, with which probes, into which run store.

It never breaks the training it watches: a probe that fails records NaN with a status and
the loop goes on; measurement runs without gradients, restores every module's train/eval
mode and the RNG states, and writes through the crash-safe run store.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .models import MatrixRef, catalog as build_catalog
from .models.modes import kept_modes, kept_rng
from .probes.base import Measurement, Probe, ProbeContext
from .store.writer import RunWriter

log = logging.getLogger(__name__)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """No grad; module modes and CPU/CUDA RNG states are restored on exit."""
    with kept_rng(), torch.no_grad(), kept_modes(model):
        yield


class Monitor:
    """Watch ``model`` during training and write what the probes measure to ``run_dir``.

    Call :meth:`step` once per optimizer step (after it). Scalars are flushed every
    ``flush_every_s`` seconds; a probe measurement is flushed at once. Use as a context
    manager or call :meth:`close`.

    ``resume=True`` appends to a run directory that holds a finished run (else that is a
    :class:`~specscope.errors.ConfigError`); ``rank`` names this writer ``rank{N}`` (each DDP rank
    may run its own monitor on one run directory).
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | os.PathLike,
        probes: Iterable[Probe] = (),
        run_id: str | None = None,
        config: dict | None = None,
        flush_every_s: float = 30.0,
        catalog: list[MatrixRef] | None = None,
        resume: bool = False,
        rank: int | None = None,
    ):
        self.model = model
        self.probes = list(probes)
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be unique, got {names}")
        self.catalog = catalog if catalog is not None else build_catalog(model)
        self.writer = RunWriter(run_dir, run_id=run_id, config=config, resume=resume, rank=rank)
        summary = self.catalog.summary() if hasattr(self.catalog, "summary") else {"matrices": len(self.catalog)}
        self.writer.write_meta(probes=[p.describe() for p in self.probes], catalog=summary)
        self.flush_every_s = flush_every_s
        self._last_flush = time.monotonic()
        self._closed = False
        self._warned_closed = False
        self.last_step: int | None = None
        self._observe_errors: dict[str, set[str]] = {}  # probe -> reasons already recorded
        for p in self.probes:
            try:
                p.setup(model)
            except Exception as exc:
                log.warning("probe %s setup failed: %s", p.name, exc)

    @property
    def run_dir(self):
        return self.writer.dir

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, step: int, tokens: int | None = None, **scalars: Any) -> None:
        """Record training scalars (loss, lr, tokens_per_s, ...) without measuring.

        Values are coerced by the run store: one that is not a number is stored as NaN, with a warning."""
        if self._is_closed():
            return
        now = time.time()
        self.writer.add_many("scalars", [{"step": step, "tokens": tokens, "name": name, "value": value, "wall_time": now}
                                         for name, value in scalars.items() if value is not None])

    def _is_closed(self) -> bool:
        """True after :meth:`close` (warning once: calls after close are no-ops, never errors)."""
        if self._closed and not self._warned_closed:
            self._warned_closed = True
            log.warning("monitor of %s is closed: step()/log() after close() are ignored", self.writer.dir)
        return self._closed

    def step(self, step: int, loss: Any = None, tokens: int | None = None, **scalars: Any) -> None:
        """Record this step's scalars and run every probe that is due."""
        if self._is_closed():
            return
        try:
            step = int(step)
        except (TypeError, ValueError, OverflowError):
            log.warning("monitor: step %r is not an integer; step ignored", step)
            return
        self.last_step = step
        self.log(step, tokens, loss=loss, **scalars)
        for p in self.probes:
            if p.observes_every_step:
                try:
                    with preserved(self.model):
                        p.observe(ProbeContext(self.model, self.catalog, int(step), tokens))
                except Exception as exc:  # never break the user's training: record it, say it once
                    self._observe_failed(p, step, tokens, exc)
        due = [p for p in self.probes if p.due(int(step))]
        if due:
            self.measure(step, tokens, due)
        elif time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def _observe_failed(self, probe: Probe, step: int, tokens: int | None, exc: Exception) -> None:
        """A failed observe: a ``probe_error`` row (NaN and the reason) the first time each reason occurs,
        a warning then, and a ``probe_failed/<probe>`` scalar at every failing step."""
        why = f"observe failed: {type(exc).__name__}: {exc}"
        seen = self._observe_errors.setdefault(probe.name, set())
        if why not in seen:
            seen.add(why)
            log.warning("probe %s failed to observe step %s: %s (recorded; said once)", probe.name, step, exc)
            self.writer.add_measurement(step, tokens, probe.name, Measurement.failure(why))
        self.log(step, tokens, **{f"probe_failed/{probe.name}": 1.0})

    def measure(self, step: int, tokens: int | None = None, probes: Iterable[Probe] | None = None) -> None:
        """Run probes now (default: all) and flush."""
        ctx = ProbeContext(self.model, self.catalog, int(step), tokens)
        for probe in probes if probes is not None else self.probes:
            t0 = time.perf_counter()
            try:
                with preserved(self.model):
                    result = probe.measure(ctx)
                status = "ok"
            except Exception as exc:  # never break the user's training
                log.warning("probe %s failed at step %s: %s", probe.name, step, exc)
                result = Measurement.failure(f"{type(exc).__name__}: {exc}")
                status = "error"
            elapsed = time.perf_counter() - t0
            self.writer.add_measurement(int(step), tokens, probe.name, result)
            self.log(step, tokens, **{f"probe_seconds/{probe.name}": elapsed})
            if status != "ok":
                self.log(step, tokens, **{f"probe_failed/{probe.name}": 1.0})
        self.flush()

    def flush(self) -> None:
        try:
            self.writer.flush()
        except Exception as exc:  # disk full etc.: keep training, keep the buffer
            log.error("run store flush failed: %s", exc)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.writer.close()
        except Exception as exc:
            log.error("closing run store failed: %s", exc)

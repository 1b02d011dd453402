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


def share_groups(probes: Iterable[Probe]) -> list[list[Probe]]:
    """The probes in measuring groups: a probe first in a group with every other that has a need in common with
    it and that it can measure in its own pass (``lead.shares_pass(other)``), every other probe alone; groups
    in the order of their first probe. A ``shares_pass`` that raises counts as False."""
    probes = list(probes)
    lead_of: dict[int, Probe] = {}
    for lead in probes:
        if id(lead) in lead_of or not lead.needs:
            continue
        for other in probes:
            if other is lead or id(other) in lead_of or not (lead.needs & other.needs):
                continue
            try:
                joins = lead.shares_pass(other)
            except Exception as exc:
                log.debug("probe %s: shares_pass(%s) failed: %s", lead.name, other.name, exc)
                joins = False
            if joins:
                lead_of[id(lead)] = lead
                lead_of[id(other)] = lead
    groups: dict[int, list[Probe]] = {}
    for p in probes:
        lead = lead_of.get(id(p), p)
        groups.setdefault(id(lead), []).append(p)
    for members in groups.values():  # the lead first
        lead = lead_of.get(id(members[0]), members[0])
        members.sort(key=lambda p: p is not lead)
    return list(groups.values())


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
        """Run probes now (default: all) and flush.

        Probes with a need in common (``Probe.needs``) that one of them can measure in its own pass
        (``Probe.shares_pass``: e.g. activations in the per-sample gradients' forward over one pool)
        run as one group: one pass, each probe's rows written as its own; the pass's seconds are split
        evenly among the probes it measured in ``probe_seconds``. A group that fails records NaN with
        the status for each of its probes; one that does not apply after all is measured probe by
        probe (the time of the attempt split among them)."""
        ctx = ProbeContext(self.model, self.catalog, int(step), tokens)
        for group in share_groups(probes if probes is not None else self.probes):
            shared, shared_s = self._measure_group(group, ctx)
            for probe in group:
                t0 = time.perf_counter()
                try:
                    got = shared.get(id(probe))
                    if isinstance(got, Exception):
                        raise got
                    if got is None:
                        with preserved(self.model):
                            got = probe.measure(ctx)
                    if not isinstance(got, Measurement):
                        raise TypeError(f"measure() returned {type(got).__name__}, not a Measurement")
                    result = got
                    status = "ok"
                except Exception as exc:  # never break the user's training
                    log.warning("probe %s failed at step %s: %s", probe.name, step, exc)
                    result = Measurement.failure(f"{type(exc).__name__}: {exc}")
                    status = "error"
                share = shared_s / len(shared) if id(probe) in shared else 0.0 if shared else shared_s / len(group)
                elapsed = time.perf_counter() - t0 + share
                self.writer.add_measurement(int(step), tokens, probe.name, result)
                self.log(step, tokens, **{f"probe_seconds/{probe.name}": elapsed})
                if status != "ok":
                    self.log(step, tokens, **{f"probe_failed/{probe.name}": 1.0})
        self.flush()

    def _measure_group(self, group: list[Probe], ctx: ProbeContext) -> tuple[dict[int, Any], float]:
        """The group's shared pass: ``({id(probe): Measurement or the exception}, seconds)``; ``({}, 0)`` for a
        single probe or when the pass does not apply (each probe is then measured alone)."""
        if len(group) < 2:
            return {}, 0.0
        t0 = time.perf_counter()
        try:
            with preserved(self.model):
                got = group[0].measure_shared(ctx, group[1:])
        except Exception as exc:  # a failed shared pass fails every probe in it, never the training
            got = {id(p): exc for p in group}
        return (got or {}), time.perf_counter() - t0

    def flush(self) -> None:
        """Write buffered rows to the run store now; a failure (disk full...) is logged, the buffer kept."""
        try:
            self.writer.flush()
        except Exception as exc:  # disk full etc.: keep training, keep the buffer
            log.error("run store flush failed: %s", exc)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close the run store (idempotent); later ``step()`` / ``log()`` calls are ignored."""
        if self._closed:
            return
        self._closed = True
        try:
            self.writer.close()
        except Exception as exc:
            log.error("closing run store failed: %s", exc)

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

from .errors import ConfigError
from .models import MatrixRef, catalog as build_catalog
from .models.modes import kept_modes, kept_rng
from .models.sharded import unsupported_sharding
from .probes.base import Measurement, Probe, ProbeContext
from .sinks import Guarded, open_sinks
from .store.writer import NullWriter, RunWriter
from .streams.dist import DEFAULT_TIMEOUT_S, Dist, DistBroken, PeerFailed, failure

log = logging.getLogger(__name__)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """No grad; module modes and CPU/CUDA RNG states are restored on exit."""
    with kept_rng(), torch.no_grad(), kept_modes(model):
        yield


def scalar(v: Any) -> float | None:
    """A logged value as a Python float (numbers, one-element tensors), in the value's own units; None for anything
    else (strings, multi-element tensors, objects)."""
    if isinstance(v, (str, bytes)):
        return None
    try:
        return float(v.detach().item() if hasattr(v, "detach") else v)
    except (TypeError, ValueError, RuntimeError):
        return None


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
    :class:`~specscope.errors.ConfigError`).

    **Distributed jobs** (an initialized ``torch.distributed`` process group of two or more ranks, as under
    ``torchrun``; ``distributed=None`` detects it, ``False`` turns it off): every rank constructs the monitor
    with the same probes and calls :meth:`step` at every step, as the same script does on every rank. The
    ranks share the measuring (each probe splits its work: matrices of the weight sweep, batches of the
    pool, coordinates of the trajectory; a sharded FSDP2 parameter is gathered, in bounded batches, onto the
    rank that measures it) and rank 0 alone writes the run store, each measurement once. The scalars
    given to :meth:`step` are averaged over the ranks (with equal per-rank batches, the loss of the
    global batch); :meth:`log` records rank 0's own. The monitor's collectives run on a gloo group of
    its own with ``timeout_s``; a probe that fails on one rank is recorded as failed (NaN and the
    reason) on every rank, and after a timeout the monitor stops its collectives and records why.

    ``rank=N`` instead names this writer ``rank{N}``: each rank then runs an independent monitor writing
    its own rows into one run directory (no shared measuring).

    ``log_to``: where else each measurement goes, at the same step, after the run store has it: backend names
    (``"tensorboard"``, into ``<run_dir>/tensorboard``; ``"wandb"``, ``"mlflow"``: the active run, else a new one),
    the user's own ``SummaryWriter`` / W&B run / MLflow run, ``(name, options)``, or any object with
    ``write(step, probe, measurement)``, ``flush()`` and ``close()`` (:mod:`specscope.sinks`; the backends:
    :mod:`specscope.export`). Only the process that writes the run store exports (rank 0). The scalars given to
    :meth:`step` / :meth:`log` are not exported live (the user logs them already). A sink that fails is logged once
    and never stops the training; one that cannot be opened is a :class:`~specscope.errors.ConfigError` here.
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
        distributed: bool | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        log_to: Iterable[Any] = (),
    ):
        self.model = model
        self.probes = list(probes)
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be unique, got {names}")
        self.unsupported = unsupported_sharding(model)  # why no probe can read this model (None: they can)
        if self.unsupported is not None:
            log.warning("specscope: %s; each probe records this reason once", self.unsupported)
            catalog = []
        self.catalog = catalog if catalog is not None else build_catalog(model)
        self.dist = Dist.start(timeout_s) if rank is None and distributed is not False else None
        if distributed and self.dist is None:
            log.warning("monitor: distributed=True but no torch.distributed process group of two or more ranks is "
                        "initialized; measuring in this process alone")
        self.sinks: list[Guarded] = []
        self.writer = self._open_writer(run_dir, list(log_to or ()), run_id=run_id, config=config, resume=resume,
                                        rank=rank)
        summary = self.catalog.summary() if hasattr(self.catalog, "summary") else {"matrices": len(self.catalog)}
        described = [p.describe() for p in self.probes]
        self.writer.write_meta(probes=described, catalog=summary,
                               distributed={"world": self.dist.world, "timeout_s": self.dist.timeout_s}
                               if self.dist is not None else None)
        if self.dist is not None and self.unsupported is None:
            self._agree_setup([r.name for r in self.catalog], described)
        self._told_unsupported: set[str] = set()
        self._said_failures: set[tuple[str, str]] = set()
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

    def _open_writer(self, run_dir: str | os.PathLike, log_to: list, **kwargs: Any) -> RunWriter | NullWriter:
        """This process's writer: a :class:`RunWriter` (rank 0 of a distributed job, or one process), a
        :class:`NullWriter` on the other ranks; the writing process opens the ``log_to`` sinks too. In a distributed
        job the ranks agree first: when rank 0 cannot open the run store or a sink, every rank raises its error (no
        rank is left waiting in a collective)."""
        if self.dist is None:
            return self._open_store(run_dir, log_to, **kwargs)
        writer: Any = NullWriter(run_dir)
        failed: Exception | None = None
        if self.dist.main:
            try:
                writer = self._open_store(run_dir, log_to, **kwargs)
            except Exception as exc:  # told to every rank below
                failed = exc
        try:
            self.dist.exchange(failed, "open")
        except PeerFailed as exc:
            self.dist.close()
            if failed is not None:
                raise failed
            raise ConfigError(f"the run store could not be opened: {exc}") from None
        return writer

    def _open_store(self, run_dir: str | os.PathLike, log_to: list, **kwargs: Any) -> RunWriter:
        """The :class:`RunWriter`, with ``self.sinks`` opened from ``log_to`` (none for ``rank=N`` other than 0); when a
        sink cannot be opened, the writer is closed and the :class:`ConfigError` raised."""
        writer = RunWriter(run_dir, **kwargs)
        if log_to and not kwargs.get("rank"):
            try:
                self.sinks = open_sinks(log_to, run_dir=writer.dir, run_name=writer.run_id,
                                        config=kwargs.get("config"))
            except Exception:
                writer.close()
                raise
        return writer

    def _agree_setup(self, names: list[str], described: list[dict]) -> None:
        """Check every rank cataloged the same matrices and set up the same probes; otherwise stop the monitor's
        collectives (each probe then records why at every measurement) and say so."""
        try:
            seen = self.dist.exchange((names, [(d["name"], d["type"], d["schedule"]) for d in described]), "setup")
        except (PeerFailed, DistBroken) as exc:
            log.error("monitor: ranks could not agree at setup: %s", exc)
            return
        if any(s != seen[0] for s in seen[1:]):
            self.dist.stop("ranks differ in their cataloged matrices or probes (every rank must build the same "
                            "model and the same probes)")

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
        self.log(step, tokens, **self._across_ranks(step, {"loss": loss, **scalars}))
        for p in self.probes:
            if p.observes_every_step and self.unsupported is None:
                try:
                    with preserved(self.model):
                        p.observe(ProbeContext(self.model, self.catalog, int(step), tokens, self.dist))
                except Exception as exc:  # never break the user's training: record it, say it once
                    self._observe_failed(p, step, tokens, exc)
        due = [p for p in self.probes if p.due(int(step))]
        if due:
            self.measure(step, tokens, due)
        elif time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def _across_ranks(self, step: int, scalars: dict[str, Any]) -> dict[str, Any]:
        """The scalars of a step: in a distributed job, each one's mean over the ranks that gave a number (one
        exchange); else, or when the exchange fails, this rank's own."""
        if self.dist is None:
            return scalars
        mine = {k: scalar(v) for k, v in scalars.items() if v is not None}
        try:
            every = self.dist.exchange(mine, f"scalars@{step}")
        except (PeerFailed, DistBroken):
            return scalars
        out: dict[str, Any] = {}
        for name in mine:
            vals = [e[name] for e in every if e.get(name) is not None and e[name] == e[name]]
            out[name] = sum(vals) / len(vals) if vals else scalars[name]
        return out

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
        ctx = ProbeContext(self.model, self.catalog, int(step), tokens, self.dist)
        chosen = list(probes if probes is not None else self.probes)
        if self.unsupported is not None:  # nothing can be read: each probe says why once
            for probe in chosen:
                if probe.name not in self._told_unsupported:
                    self._told_unsupported.add(probe.name)
                    self.writer.add_measurement(int(step), tokens, probe.name, Measurement.failure(self.unsupported))
            chosen = []
        # distributed: each probe splits its own work across the ranks; no shared pass
        groups = share_groups(chosen) if self.dist is None else [[p] for p in chosen]
        for group in groups:
            shared, shared_s = self._measure_group(group, ctx)
            for probe in group:
                t0 = time.perf_counter()
                got = self._measure_one(probe, ctx, shared.get(id(probe)))
                if self.dist is not None:  # every rank's part, or the failure every rank records
                    got = self._gathered(probe, int(step), got)
                if isinstance(got, Exception):  # never break the user's training
                    self._say_failed(probe, int(step), got)
                    result, status = Measurement.failure(f"{type(got).__name__}: {got}"), "error"
                else:
                    result, status = got, "ok"
                share = shared_s / len(shared) if id(probe) in shared else 0.0 if shared else shared_s / len(group)
                elapsed = time.perf_counter() - t0 + share
                self.writer.add_measurement(int(step), tokens, probe.name, result)
                for sink in self.sinks:  # never raises: each sink is guarded
                    sink.write(int(step), probe.name, result)
                self.log(step, tokens, **{f"probe_seconds/{probe.name}": elapsed})
                if status != "ok":
                    self.log(step, tokens, **{f"probe_failed/{probe.name}": 1.0})
        self.flush()

    def _say_failed(self, probe: Probe, step: int, exc: Exception) -> None:
        """Log a failed measurement: a warning the first time each (probe, reason) occurs (on rank 0 alone in a
        distributed job, whose ranks share the reason), DEBUG after; the store records every one."""
        key = (probe.name, f"{type(exc).__name__}: {exc}")
        first = key not in self._said_failures
        self._said_failures.add(key)
        quiet = not first or (self.dist is not None and not self.dist.main)
        log.log(logging.DEBUG if quiet else logging.WARNING, "probe %s failed at step %s: %s%s", probe.name, step, exc,
                "" if quiet else " (recorded at every failing step; said once)")

    def _measure_one(self, probe: Probe, ctx: ProbeContext, shared: Any) -> Measurement | Exception:
        """``probe``'s measurement at ``ctx`` (``shared``: what its group's shared pass gave it, if anything), or the
        exception it raised (returned, never raised)."""
        try:
            if self.dist is not None and self.dist.broken is not None:  # no collective can succeed: say why at once
                raise DistBroken(f"distributed measuring stopped: {self.dist.broken}")
            got = shared
            if isinstance(got, Exception):
                raise got
            if got is None:
                with preserved(self.model):
                    got = probe.measure(ctx)
            if not isinstance(got, Measurement):
                raise TypeError(f"measure() returned {type(got).__name__}, not a Measurement")
            return got
        except Exception as exc:
            return exc

    def _gathered(self, probe: Probe, step: int, got: Measurement | Exception) -> Measurement | Exception:
        """Every rank's part of ``probe``'s measurement, concatenated in rank order (what rank 0 writes), or the
        failure every rank agrees on (one exchange through the monitor's group)."""
        try:
            parts = self.dist.exchange(failure(got) if isinstance(got, Exception) else got, f"{probe.name}@{step}")
        except (PeerFailed, DistBroken) as exc:
            return exc
        out = Measurement()
        for part in parts:
            out.metrics.extend(part.metrics)
            out.spectra.extend(part.spectra)
        return out

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
        """Write buffered rows to the run store now, and flush the ``log_to`` sinks; a failure (disk full...) is
        logged, the buffer kept. Returns None."""
        try:
            self.writer.flush()
        except Exception as exc:  # disk full etc.: keep training, keep the buffer
            log.error("run store flush failed: %s", exc)
        for sink in self.sinks:
            sink.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close the run store and the ``log_to`` sinks (idempotent); later ``step()`` / ``log()`` calls are
        ignored. Returns None."""
        if self._closed:
            return
        self._closed = True
        if self.dist is not None:
            self.dist.close()
        try:
            self.writer.close()
        except Exception as exc:
            log.error("closing run store failed: %s", exc)
        for sink in self.sinks:
            sink.close()

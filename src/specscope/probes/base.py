"""Probes: each one small class that says what it reads and what it computes; a schedule says when."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

from torch import nn

from ..errors import ConfigError
from ..models import KINDS, MatrixRef
from ..streams.dist import Dist
from ..store.rows import Measurement  # noqa: F401  (a row container of the store; ss.probes.Measurement)
from .schedule import ScheduleLike, as_schedule, check_int  # noqa: F401 (check_int: re-exported to the probes)
from .schedule import at as at_steps

log = logging.getLogger(__name__)


def check_choice(what: str, value: Any, choices: Iterable[str]) -> Any:
    """``value`` when it is one of ``choices``, else a :class:`ConfigError` naming them."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    """Matrix kinds, each one of :data:`specscope.models.KINDS` (None: all kinds)."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        raise ConfigError(f"kinds must be a list of kinds, not the string {kinds!r} (e.g. kinds=[{kinds!r}])")
    kinds = frozenset(kinds)
    unknown = sorted(map(str, kinds - set(KINDS)))
    if unknown:
        raise ConfigError(f"unknown kind {', '.join(map(repr, unknown))}; kinds are {', '.join(KINDS)}")
    return kinds


@dataclass
class ProbeContext:
    """What a probe may read at one measurement."""

    model: nn.Module
    catalog: list[MatrixRef]
    step: int
    tokens: int | None = None
    dist: Dist | None = None  # a distributed job: the monitor's collectives (None: one process)


#: What a probe may need from the model at a measurement; the monitor groups due probes by it and
#: runs a pass that several of them need once (see :meth:`Probe.shares_pass`).
NEEDS = {
    "parameters": "the weight matrices as they are at the measured step (read; no forward pass)",
    "update": "each optimizer step's update theta_{t+1} - theta_t: observe() runs at every monitor step",
    "pool_forward": "a forward pass of the model over a fixed probe pool",
    "layer_backward": "per-sample losses of the pool backpropagated to one layer (from that forward)",
    "step_batch": "the training step's own forward and backward through one layer (hooks armed for a due step; no extra pass)",
}


class Probe:
    """Base class: one small class that says what it needs (``needs``, words of :data:`NEEDS`) and what it
    computes (:meth:`measure`); a schedule says when it runs. Subclasses set ``name`` and ``needs``.

    ``every``: an int (measure at steps where ``step % every == 0``; ``every=0``: never), or a
    schedule: :func:`~specscope.probes.schedule.every`, :func:`~specscope.probes.schedule.at`,
    :func:`~specscope.probes.schedule.log_spaced` (dense early probing), their union ``a | b``, or
    any callable ``step -> bool``. ``at``: steps measured as well. A bad schedule is a
    :class:`ConfigError` here; a callable that raises at a step makes the probe not due at that
    step (a warning, said once), never an error in the training loop.
    """

    name = "probe"
    needs: frozenset[str] = frozenset()
    observes_every_step = False  # True: `observe` runs at every monitor step, `measure` on the schedule

    def __init__(self, every: ScheduleLike = 25, at: Iterable[int] = (), name: str | None = None):
        what = f"{type(self).__name__}: every"
        self.schedule = as_schedule(every, what)
        self.every = None if callable(every) else int(every)  # the int given, kept for readers
        listed = at_steps(at, f"{type(self).__name__}: at")
        self.at = listed.steps
        if self.at:
            self.schedule = listed if self.every == 0 else self.schedule | listed
        self._schedule_failed = False
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
            self.name = name

    def due(self, step: int) -> bool:
        """True when the schedule says to measure at ``step``; False (warning once) when the schedule raises."""
        try:
            return self.schedule(step)
        except Exception as exc:  # never break the user's training
            if not self._schedule_failed:
                self._schedule_failed = True
                log.warning("probe %s: its schedule (%s) failed at step %s: %s: %s; not measured at such steps "
                            "(said once)", self.name, self.schedule, step, type(exc).__name__, exc)
            return False

    def setup(self, model: nn.Module) -> None:
        """Called once when the monitor starts."""

    def observe(self, ctx: ProbeContext) -> None:
        """Called at every step for probes with ``observes_every_step`` (e.g. to record each update)."""

    def measure(self, ctx: ProbeContext) -> Measurement:
        """This probe's rows at ``ctx.step`` (the monitor adds run id, step, tokens)."""
        raise NotImplementedError

    def shares_pass(self, other: "Probe") -> bool:
        """True when ``other`` (due at the same step, with a need in common) can be measured in this probe's
        own pass (:meth:`measure_shared`); the base shares nothing."""
        return False

    def measure_shared(self, ctx: ProbeContext, others: list["Probe"]) -> dict[int, Measurement] | None:
        """This probe and ``others`` (each accepted by :meth:`shares_pass`) measured in one pass, keyed by
        ``id(probe)``; None when sharing does not apply after all (each is then measured alone)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What this probe is, for ``meta.json``: type, name, readable schedule, ``every`` (the int, or None
        for a schedule), ``at`` and ``needs``."""
        return {"type": type(self).__name__, "name": self.name, "schedule": str(self.schedule), "every": self.every,
                "at": sorted(self.at), "needs": sorted(self.needs)}

"""Probes: each one small class that says what it reads and what it computes; a schedule says when."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import nn

from ..models import MatrixRef


@dataclass
class ProbeContext:
    """What a probe may read at one measurement."""

    model: nn.Module
    catalog: list[MatrixRef]
    step: int
    tokens: int | None = None


@dataclass
class Measurement:
    """Rows a probe produced; the monitor adds run id, step and tokens."""

    metrics: list[dict] = field(default_factory=list)
    spectra: list[dict] = field(default_factory=list)

    def add_metric(self, layer: int, kind: str, name: str, metric: str, value: float, status: str = "ok",
                   part: int = -1) -> None:
        self.metrics.append({"layer": layer, "kind": kind, "part": part, "name": name, "metric": metric, "value": value,
                             "status": status})


class Probe:
    """Base class. Subclasses set ``name`` and implement :meth:`measure`.

    Schedule: measured at steps where ``step % every == 0`` (``every=0`` disables that),
    plus any step listed in ``at``.
    """

    name = "probe"
    observes_every_step = False  # True: `observe` runs at every monitor step, `measure` on the schedule

    def __init__(self, every: int = 25, at: Iterable[int] = (), name: str | None = None):
        if every < 0:
            raise ValueError("every must be >= 0")
        self.every = int(every)
        self.at = frozenset(int(s) for s in at)
        if name is not None:
            self.name = name

    def due(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step in self.at

    def setup(self, model: nn.Module) -> None:
        """Called once when the monitor starts."""

    def observe(self, ctx: ProbeContext) -> None:
        """Called at every step for probes with ``observes_every_step`` (e.g. to record each update)."""

    def measure(self, ctx: ProbeContext) -> Measurement:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "name": self.name, "every": self.every, "at": sorted(self.at)}

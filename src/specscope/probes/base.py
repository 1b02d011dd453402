"""Probes: each one small class that says what it reads and what it computes; a schedule says when."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..models import KINDS, MatrixRef
from ..store.rows import Measurement  # noqa: F401  (a row container of the store; ss.probes.Measurement)


def check_int(what: str, value: Any, low: int) -> int:
    """``value`` as an int, or a :class:`ConfigError` when it is not an integer ``>= low`` (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


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


class Probe:
    """Base class. Subclasses set ``name`` and implement :meth:`measure`.

    Schedule: measured at steps where ``step % every == 0`` (``every=0`` disables that),
    plus any step listed in ``at``.
    """

    name = "probe"
    observes_every_step = False  # True: `observe` runs at every monitor step, `measure` on the schedule

    def __init__(self, every: int = 25, at: Iterable[int] = (), name: str | None = None):
        self.every = check_int("every", every, 0)
        if isinstance(at, (str, bytes)) or not isinstance(at, Iterable):
            raise ConfigError(f"{type(self).__name__}: at must be an iterable of steps (integers >= 0), got {at!r}")
        self.at = frozenset(check_int("at", s, 0) for s in at)
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
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

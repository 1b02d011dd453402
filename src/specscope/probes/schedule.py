"""When a probe measures: a schedule is any callable ``step -> bool`` (True: measure at that step).

- :func:`every` ``(n)``: steps ``0, n, 2n, ...`` (``every(0)``: never).
- :func:`at` ``(steps)``: exactly the listed steps.
- :func:`log_spaced` ``(start, stop, per_decade=8)``: dense early probing, evenly spaced in
  ``log(step)``: step 0, then ``round(start * 10 ** (i / per_decade))`` for ``i = 0, 1, ...``
  while that is ``<= stop`` (halves round up; duplicates from rounding merged). E.g.
  ``log_spaced(1, 100, 4)`` yields ``0, 1, 2, 3, 6, 10, 18, 32, 56, 100``; nothing after ``stop``
  (add ``| every(1000)`` to go on).
- ``a | b``: the union (due when either is); a plain int or callable on either side is taken as
  :func:`as_schedule` takes it.
- :func:`paired` ``(schedule)``: due at ``t`` and ``t + 1`` whenever ``schedule`` is due at ``t``
  (paired measurements: the step-to-step change between consecutive optimizer steps, SPEC 5.1).

Each is a :class:`Schedule`, whose ``str()`` says what it does (``"every 25"``,
``"log_spaced(1, 10000, 8/decade)"``, ``"custom my_fn"``), as stored in a run's ``meta.json``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Union

import numpy as np

from ..errors import ConfigError

ScheduleLike = Union[int, Callable[[int], bool]]
_SHOWN = 8  # steps of an `at` list written out in its description


def check_int(what: str, value: Any, low: int = 0) -> int:
    """``value`` as an int, or a :class:`ConfigError` when it is not an integer ``>= low`` (bools, floats and
    strings are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


class Schedule:
    """A callable ``step -> bool`` with a readable description (``str()``); ``a | b`` is their union.
    ``steps``: the steps it is due at when they are a finite list (:func:`at`, :func:`log_spaced`), else None."""

    __slots__ = ("_fn", "text", "steps")

    def __init__(self, fn: Callable[[int], bool], text: str, steps: frozenset[int] | None = None):
        self._fn = fn
        self.text = text
        self.steps = steps

    def __call__(self, step: int) -> bool:
        """True when the probe measures at ``step`` (an exception in a custom callable propagates)."""
        return bool(self._fn(step))

    def __or__(self, other: ScheduleLike) -> "Schedule":
        """The union: a schedule due at a step when either is."""
        other = as_schedule(other)
        return Schedule(lambda step: self(step) or other(step), f"{self.text} | {other.text}")

    def __ror__(self, other: ScheduleLike) -> "Schedule":
        """``25 | log_spaced(...)``, ``my_fn | every(10)``: the union, the left side taken by :func:`as_schedule`."""
        return as_schedule(other) | self

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<Schedule {self.text}>"


def every(n: int) -> Schedule:
    """Due at steps ``0, n, 2n, ...`` (``step % n == 0``); ``every(0)`` is never due. Described ``"every N"``."""
    n = check_int("every(n)", n)
    if n == 0:
        return Schedule(lambda step: False, "never")
    return Schedule(lambda step: step % n == 0, f"every {n}")


def at(steps: Iterable[int], what: str = "at") -> Schedule:
    """Due exactly at the listed steps (integers ``>= 0``; ``.steps`` holds them). Described ``"at [0, 5, 10]"``
    (long lists shortened)."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise ConfigError(f"{what} must be an iterable of steps (integers >= 0), got {steps!r}")
    keep = frozenset(check_int(what, s) for s in steps)
    shown = sorted(keep)
    text = (f"at {shown}" if len(shown) <= _SHOWN else
            f"at [{', '.join(map(str, shown[:_SHOWN]))}, ... {len(shown)} steps up to {shown[-1]}]")
    return Schedule(keep.__contains__, text, keep)


def log_spaced_steps(start: int, stop: int, per_decade: int = 8) -> list[int]:
    """The steps :func:`log_spaced` yields, ascending: 0, then ``round(start * 10 ** (i / per_decade))``
    (halves up) for ``i = 0, 1, ...`` while that is ``<= stop``, duplicates merged."""
    start = check_int("log_spaced: start", start, 1)
    stop = check_int("log_spaced: stop", stop, start)
    per_decade = check_int("log_spaced: per_decade", per_decade, 1)
    steps = {0}
    for i in range(per_decade * (math.ceil(math.log10(stop / start)) + 1) + 1):
        x = start * 10.0 ** (i / per_decade)
        if x > stop * (1 + 1e-12):  # 1e-12: 10 ** (i / per_decade) a hair above a power of ten
            break
        steps.add(min(stop, math.floor(x + 0.5)))
    return sorted(steps)


def log_spaced(start: int, stop: int, per_decade: int = 8) -> Schedule:
    """Dense early probing, evenly spaced in ``log(step)``: step 0, ``start``, then ``per_decade`` steps
    per factor of ten up to ``stop`` (exactly :func:`log_spaced_steps`); never due after ``stop``.
    Described ``"log_spaced(start, stop, N/decade)"``."""
    steps = frozenset(log_spaced_steps(start, stop, per_decade))
    return Schedule(steps.__contains__, f"log_spaced({start}, {stop}, {per_decade}/decade)", steps)


def paired(schedule: ScheduleLike) -> Schedule:
    """Due at ``t`` and at ``t + 1`` whenever ``schedule`` (anything :func:`as_schedule` takes) is due at ``t``: a
    :class:`Schedule` described ``"paired(every 25)"``, whose ``.steps`` are the listed steps and each one after
    when ``schedule`` lists its steps. A probe on it measures consecutive optimizer steps ``(t, t + 1)``, so a
    step-to-step change (SPEC 5.1's SD variation) is measured rather than divided by the gap between
    measurements."""
    base = as_schedule(schedule, "paired(schedule)")
    steps = None if base.steps is None else frozenset(base.steps | {s + 1 for s in base.steps})
    return Schedule(lambda step: base(step) or (step >= 1 and base(step - 1)), f"paired({base.text})", steps)


def as_schedule(value: Any, what: str = "every") -> Schedule:
    """A :class:`Schedule` from what a probe's ``every=`` takes: an int ``n >= 0`` (:func:`every`; 0: never),
    a :class:`Schedule`, or any callable ``step -> bool`` (described ``"custom <its name>"``). Anything
    else (a negative int, a bool, a float, a string) is a :class:`ConfigError`."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (bool, str, bytes)) or not (isinstance(value, (int, np.integer)) or callable(value)):
        raise ConfigError(f"{what} must be an integer >= 0 (every N steps; 0: never), a schedule "
                          f"(ss.probes.every / at / log_spaced) or a callable step -> bool, got {value!r}")
    if not callable(value):
        return every(check_int(what, value))
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or type(value).__name__
    return Schedule(value, f"custom {name}")

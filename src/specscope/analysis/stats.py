"""Noise for verdicts (SPEC section 5): a number's mean and spread over seeds (or layers, or steps),
and whether a difference, or a number against a paper's threshold, is beyond that noise.

Rules (documented):

- An :class:`Estimate` is a mean with its spread ``sd`` (sample standard deviation, ``ddof=1``)
  over ``n`` independent values and a two-sided ``CI_LEVEL`` confidence interval ``[lo, hi]``:
  Student's t over seeds (:func:`estimate`), a percentile bootstrap over layers or steps
  (:func:`bootstrap`), or an interval an analysis computed itself (:func:`interval`, e.g. a fit's).
  With fewer than 2 values there is no interval (``lo``, ``hi`` NaN).
- A claim that a number is above (``side=+1``) or below (``side=-1``) a threshold is
  **reproduced** when the whole interval is on the claimed side, **not reproduced** when it is
  wholly on the other side, **not significant** otherwise, and always without an interval
  (:func:`verdict`). A comparison of two numbers is a claim on their difference against 0
  (:func:`difference`: paired over seeds when both have one value per seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from scipy.stats import t as student_t

CI_LEVEL = 0.95
VERDICTS = ("reproduced", "not reproduced", "not significant")


@dataclass(frozen=True)
class Estimate:
    """A mean with its spread: ``mean``, ``sd`` (over the ``n`` values; NaN with one), ``n`` and the confidence
    interval ``lo``, ``hi`` (NaN without one), in the units of the values."""

    mean: float
    sd: float
    n: int
    lo: float
    hi: float

    @property
    def has_interval(self) -> bool:
        """Whether the interval is known (both ends finite)."""
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def side(self, threshold: float = 0.0) -> int:
        """+1 when the whole interval is above ``threshold``, -1 when wholly below, 0 otherwise or without one."""
        if not self.has_interval:
            return 0
        return 1 if self.lo > threshold else -1 if self.hi < threshold else 0

    def text(self, fmt: str = "{:.3g}", unit: str = "", of: str = "seeds") -> str:
        """``"1.23 ± 0.05 (95% CI [1.1, 1.4], 3 seeds)"``; ``"1.23 (1 seed)"`` without a spread; ``"n/a"`` when the
        mean is not finite. ``of`` names what ``n`` counts."""
        if not math.isfinite(self.mean):
            return "n/a"
        u = f" {unit}" if unit else ""
        what = of[:-1] if self.n == 1 and of.endswith("s") else of
        if not math.isfinite(self.sd):
            if self.has_interval:
                return f"{fmt.format(self.mean)}{u} ({CI_LEVEL:.0%} CI [{fmt.format(self.lo)}, {fmt.format(self.hi)}])"
            return f"{fmt.format(self.mean)}{u} ({self.n} {what})"
        ci = f"{CI_LEVEL:.0%} CI [{fmt.format(self.lo)}, {fmt.format(self.hi)}], " if self.has_interval else ""
        return f"{fmt.format(self.mean)} ± {fmt.format(self.sd)}{u} ({ci}{self.n} {what})"


NAN = float("nan")


def _finite(values: Iterable[float]) -> np.ndarray:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float).ravel()
    return v[np.isfinite(v)]


def estimate(values: Iterable[float], level: float = CI_LEVEL) -> Estimate:
    """Mean, sample standard deviation and Student's t interval of the finite ``values`` (one per seed): an
    :class:`Estimate`; all NaN with no finite value, no spread or interval with one."""
    v = _finite(values)
    if len(v) == 0:
        return Estimate(NAN, NAN, 0, NAN, NAN)
    if len(v) == 1:
        return Estimate(float(v[0]), NAN, 1, NAN, NAN)
    mean, sd = float(v.mean()), float(v.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, len(v) - 1)) * sd / math.sqrt(len(v))
    return Estimate(mean, sd, len(v), mean - half, mean + half)


def interval(mean: float, lo: float, hi: float, n: int = 1, sd: float = NAN) -> Estimate:
    """An :class:`Estimate` from an interval an analysis computed itself (a fit's confidence interval)."""
    return Estimate(float(mean), float(sd), int(n), float(lo), float(hi))


def bootstrap(values: Iterable[float], stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 2000,
              seed: int = 0, level: float = CI_LEVEL) -> Estimate:
    """Percentile bootstrap of ``stat`` over the finite ``values`` (layers, steps): an :class:`Estimate` with
    ``mean`` = ``stat`` of the values, ``sd`` the bootstrap standard error; no interval with fewer than 3 values."""
    v = _finite(values)
    if len(v) == 0:
        return Estimate(NAN, NAN, 0, NAN, NAN)
    point = float(stat(v))
    if len(v) < 3:
        return Estimate(point, NAN, len(v), NAN, NAN)
    rng = np.random.default_rng(seed)
    draws = np.array([stat(v[rng.integers(0, len(v), len(v))]) for _ in range(n_boot)], dtype=float)
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Estimate(point, float(draws.std(ddof=1)), len(v), float(lo), float(hi))


def difference(a: Iterable[float], b: Iterable[float], paired: bool = True, level: float = CI_LEVEL) -> Estimate:
    """``a - b`` with its noise: paired per seed (``a[i] - b[i]``, both finite) when ``paired`` and both have the
    same length, else Welch's interval on the difference of the means. An :class:`Estimate` whose ``n`` is the
    number of pairs (paired) or the smaller sample, and whose ``sd`` is, unpaired, the standard error of the
    difference."""
    a_, b_ = list(a), list(b)
    if paired and len(a_) == len(b_):
        return estimate([x - y for x, y in zip(a_, b_) if x is not None and y is not None], level)
    x, y = _finite(a_), _finite(b_)
    if len(x) == 0 or len(y) == 0:
        return Estimate(NAN, NAN, 0, NAN, NAN)
    mean = float(x.mean() - y.mean())
    n = min(len(x), len(y))
    if len(x) < 2 or len(y) < 2:
        return Estimate(mean, NAN, n, NAN, NAN)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return Estimate(mean, 0.0, n, mean, mean)
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if vx + vy > 0 else 1.0
    half = float(student_t.ppf(0.5 + level / 2, dof)) * se
    return Estimate(mean, se, n, mean - half, mean + half)


def verdict(est: Estimate, threshold: float = 0.0, side: int = 1) -> str:
    """One of :data:`VERDICTS` for the claim "``est`` is above (``side=+1``) / below (``side=-1``) ``threshold``"
    (rule in the module docstring)."""
    s = est.side(threshold)
    return "not significant" if s == 0 else "reproduced" if s == side else "not reproduced"


def within(est: Estimate, low: float, high: float) -> str:
    """One of :data:`VERDICTS` for the claim "``est`` lies in ``[low, high]``": reproduced when the whole interval
    is inside, not reproduced when it is wholly outside, not significant otherwise or without an interval."""
    if not est.has_interval:
        return "not significant"
    if low <= est.lo and est.hi <= high:
        return "reproduced"
    if est.hi < low or est.lo > high:
        return "not reproduced"
    return "not significant"


def fisher_verdict(k_a: int, n_a: int, k_b: int, n_b: int, side: int = 1, alpha: float = 0.05) -> tuple[float, str]:
    """Fisher's exact test of the claim "the rate ``k_a / n_a`` is above (``side=+1``) / below (``side=-1``) the rate
    ``k_b / n_b``" (counts of successes out of trials, e.g. runs that grok): ``(p, verdict)``, ``p`` the one-sided
    p-value in the claimed direction and ``verdict`` **reproduced** when ``p < alpha``, **not reproduced** when the
    opposite one-sided p-value is below ``alpha``, **not significant** otherwise."""
    from scipy.stats import fisher_exact

    table = [[k_a, n_a - k_a], [k_b, n_b - k_b]]
    claimed, other = ("greater", "less") if side > 0 else ("less", "greater")
    p = float(fisher_exact(table, alternative=claimed)[1])
    if p < alpha:
        return p, "reproduced"
    return p, "not reproduced" if float(fisher_exact(table, alternative=other)[1]) < alpha else "not significant"

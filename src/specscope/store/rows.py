"""Rows of the run store: how a metric row and a spectrum row are built (:func:`metric_row`,
:func:`spectrum_row`, collected in a :class:`Measurement`), and row hygiene: every row is coerced to
its table's schema when it is added.

A value that does not fit its column (a string for a number, NaN or ``2**63`` for an int64, a
multi-element tensor for a float) becomes null (NaN for a float column) and, where the table has a
``status`` column, the row's status says which column was invalid. A warning is logged once per
(table, column). So one bad value never reaches the Parquet conversion, where it would fail every
later flush of the buffer.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from .schema import SCHEMAS

log = logging.getLogger(__name__)

_INT_RANGE = {pa.int64(): (-(2 ** 63), 2 ** 63 - 1), pa.int32(): (-(2 ** 31), 2 ** 31 - 1)}


class InvalidValue(ValueError):
    """A value that does not fit its column."""


def _unwrap(x: Any) -> Any:
    """numpy / torch scalars as Python scalars (a multi-element tensor raises)."""
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            return x.item()
        except (ValueError, RuntimeError) as exc:
            raise InvalidValue(f"not a scalar ({type(x).__name__})") from exc
    return x


def _int_converter(lo: int, hi: int) -> Callable[[Any], int]:
    def convert(x: Any) -> int:
        x = _unwrap(x)
        if isinstance(x, float) and math.isfinite(x) and x.is_integer():
            x = int(x)
        if not isinstance(x, int):
            raise InvalidValue(f"not an integer: {x!r:.40}")
        if not lo <= x <= hi:
            raise InvalidValue(f"out of range: {x}")
        return int(x)
    return convert


def _to_float(x: Any) -> float:
    x = _unwrap(x)
    if not isinstance(x, (int, float)):
        raise InvalidValue(f"not a number: {x!r:.40}")
    try:
        return float(x)
    except OverflowError as exc:
        raise InvalidValue(f"out of range: {x}") from exc


def _to_str(x: Any) -> str:
    return x if isinstance(x, str) else str(x)


def _to_floats(x: Any) -> list[float]:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64).ravel().tolist()
    except (TypeError, ValueError) as exc:
        raise InvalidValue(f"not a list of numbers ({type(x).__name__})") from exc


def _converter(t: pa.DataType) -> Callable[[Any], Any]:
    if t in _INT_RANGE:
        return _int_converter(*_INT_RANGE[t])
    if t == pa.float64():
        return _to_float
    if t == pa.string():
        return _to_str
    if pa.types.is_list(t):
        return _to_floats
    raise TypeError(f"no converter for {t}")


class RowCoercer:
    """Coerces rows to the store's schemas; warns once per (table, column) about invalid values."""

    def __init__(self) -> None:
        self._columns = {t: [(f.name, _converter(f.type), pa.types.is_floating(f.type)) for f in s]
                         for t, s in SCHEMAS.items()}
        self._warned: set[tuple[str, str]] = set()

    def coerce(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """A new row holding exactly ``table``'s columns, every value valid for its column."""
        out: dict[str, Any] = {}
        problems = []
        for name, convert, floating in self._columns[table]:
            x = row.get(name)
            if x is None:
                out[name] = None
                continue
            try:
                out[name] = convert(x)
            except Exception as exc:  # any bad value: null it, never fail the buffer
                out[name] = math.nan if floating else None
                problems.append(f"{name}: {exc}")
                if (table, name) not in self._warned:
                    self._warned.add((table, name))
                    log.warning("run store: invalid %s.%s (%s); stored as %s (warned once per column)",
                                table, name, exc, "NaN" if floating else "null")
        if problems and "status" in out:
            out["status"] = "invalid " + "; ".join(problems)
        return out


def metric_row(layer: int, kind: str, name: str, metric: str, value: Any, status: str = "ok",
               part: int = -1) -> dict[str, Any]:
    """One row of the ``metrics`` table without its key (run id, step, tokens, probe): where it was
    measured (``layer``, ``kind``, ``part``, ``name``), the metric's name, its value (in the metric's
    own units) and ``status`` (``"ok"`` or why the value is NaN)."""
    return {"layer": layer, "kind": kind, "part": part, "name": name, "metric": metric, "value": value, "status": status}


def spectrum_row(layer: int, kind: str, name: str, quantity: str, values: Any, status: str = "ok",
                 part: int = -1) -> dict[str, Any]:
    """One row of the ``spectra`` table without its key (run id, step, tokens, probe): where it was
    measured, what ``values`` hold (``quantity``: ``"sv"`` singular values, ``"eig"`` eigenvalues), the
    values as a list of floats, and ``status``."""
    return {"layer": layer, "kind": kind, "part": part, "name": name, "quantity": quantity,
            "values": np.asarray(values, dtype=np.float64).ravel().tolist(), "status": status}


PROBE_ERROR = "probe_error"


@dataclass
class Measurement:
    """The rows one probe produced at one measurement (:func:`metric_row` / :func:`spectrum_row` dicts);
    the run writer adds run id, step, tokens and the probe's name (:meth:`RunWriter.add_measurement`)."""

    metrics: list[dict] = field(default_factory=list)
    spectra: list[dict] = field(default_factory=list)

    @classmethod
    def failure(cls, why: str) -> "Measurement":
        """A measurement holding one ``probe_error`` row: NaN, with ``why`` as its status."""
        out = cls()
        out.add_metric(-1, "other", "", PROBE_ERROR, math.nan, why)
        return out

    def add_metric(self, layer: int, kind: str, name: str, metric: str, value: float, status: str = "ok",
                   part: int = -1) -> None:
        """Append one metric row (see :func:`metric_row`); returns nothing."""
        self.metrics.append(metric_row(layer, kind, name, metric, value, status, part))

    def add_spectrum(self, layer: int, kind: str, name: str, quantity: str, values: Any, status: str = "ok",
                     part: int = -1) -> None:
        """Append one spectrum row (see :func:`spectrum_row`); returns nothing."""
        self.spectra.append(spectrum_row(layer, kind, name, quantity, values, status, part))

"""What the exporters share: the tag of every exported number (its one home) and the base of the backend sinks.

**Tags.** A metric is exported as ``specscope/<probe>/<kind>/<metric>/<where>``, a stored spectrum as a
histogram ``specscope/<probe>/<kind>/<quantity>/<where>`` (``quantity``: ``sv`` singular values, ``eig``
eigenvalues), a training scalar as ``specscope/scalars/<name>``. ``<where>`` is ``layer_<l>`` for a matrix of
block ``l``, with ``_part_<p>`` added for one of several parts of a matrix (heads, experts, a fused projection's
slices); a matrix outside the blocks (layer -1: embeddings, heads, the trajectory's global track) has none. When
one measurement holds several matrices of one kind at one place (several ``other`` matrices in one block, say),
each one's name is added as a last segment, so every tag is unique::

    specscope/weights/q/alpha_mle/layer_3
    specscope/weights/q/alpha_mle/layer_3_part_1
    specscope/weights/other/stable_rank/layer_0/blocks.0.adapter
    specscope/weights/embed/stable_rank
    specscope/weights/q/sv/layer_3          (a histogram)
    specscope/scalars/loss

The probe's name keeps two probes' numbers of one matrix apart. Characters a backend rejects (MLflow takes
letters, digits, ``_ - . /`` and spaces) become ``_``, ``stability[1]`` becomes ``stability_1``; the same tags go
to every backend. The step is the monitor's step, the axis of the user's own logs.

A value that is not finite (NaN: a failed or undefined measurement, its reason in the run store's ``status``) is
not exported: the backends would draw it as a gap or refuse it.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..monitor import scalar

if TYPE_CHECKING:
    from ..store.rows import Measurement

PREFIX = "specscope"
BACKENDS = ("tensorboard", "wandb", "mlflow")
_INDEX = re.compile(r"\[(\w*)\]")
_BAD = re.compile(r"[^\w.\- ]")


def clean(segment: Any) -> str:
    """One tag segment as every backend takes it: ``[k]`` as ``_k``, any character other than a letter, digit,
    ``_ - .`` or space as ``_``; an empty segment as ``_``. Returns the str."""
    text = _BAD.sub("_", _INDEX.sub(r"_\1", str(segment)))
    return text.strip(".") or "_"


def where(layer: int, part: int = -1) -> str:
    """The place segment of a tag: ``layer_<l>`` (block ``l``), with ``_part_<p>`` for part ``p >= 0``; ``""`` for
    layer -1 (outside the blocks) without a part, ``part_<p>`` with one."""
    layer, part = int(layer), int(part)
    out = [f"layer_{layer}"] if layer >= 0 else []
    out += [f"part_{part}"] if part >= 0 else []
    return "_".join(out)


def tag(probe: str, kind: str, metric: str, layer: int, part: int = -1, name: str | None = None) -> str:
    """The tag of one metric (or, with ``metric`` a spectrum's quantity, one histogram): see the module docstring;
    ``name`` (the matrix's) is added only when given. Returns the str."""
    parts = [PREFIX, clean(probe), clean(kind), clean(metric)]
    place = where(layer, part)
    parts += [place] if place else []
    parts += [clean(name)] if name is not None else []
    return "/".join(parts)


def scalar_tag(name: str) -> str:
    """The tag of a training scalar (``loss``, ``probe_seconds/weights``, ...): ``specscope/scalars/<name>``, each
    segment cleaned."""
    return "/".join([PREFIX, "scalars", *(clean(s) for s in str(name).split("/"))])


def finite(value: Any) -> float | None:
    """``value`` as a float when it is one finite number (a Python or numpy number, a one-element tensor), else
    None."""
    v = scalar(value)
    return v if v is not None and math.isfinite(v) else None


def _crowded(rows: list[dict]) -> set[tuple]:
    """The (kind, layer, part) places holding matrices of more than one name in ``rows``."""
    names: dict[tuple, set] = {}
    for r in rows:
        names.setdefault((r["kind"], int(r["layer"]), int(r.get("part", -1))), set()).add(r["name"])
    return {k for k, v in names.items() if len(v) > 1}


def points(probe: str, measurement: "Measurement") -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """What one measurement exports: ``(scalars, histograms)``, dicts from tag to the metric's value (a float, in
    the metric's own units; finite values only) and to the spectrum's finite values (a float64 array, as stored:
    singular values or eigenvalues)."""
    crowded = _crowded(measurement.metrics + measurement.spectra)

    def tag_of(r: dict, what: str) -> str:
        place = (r["kind"], int(r["layer"]), int(r.get("part", -1)))
        return tag(probe, r["kind"], what, place[1], place[2], r["name"] if place in crowded else None)

    scalars = {}
    for r in measurement.metrics:
        v = finite(r["value"])
        if v is not None:
            scalars[tag_of(r, r["metric"])] = v
    hists = {}
    for r in measurement.spectra:
        vals = np.asarray(r["values"], dtype=np.float64).ravel()
        vals = vals[np.isfinite(vals)]
        if vals.size:
            hists[tag_of(r, r["quantity"])] = vals
    return scalars, hists


class Exporter:
    """Base of the backend sinks (the monitor's sink protocol, :class:`specscope.sinks.Sink`): :meth:`write` turns a
    measurement into tagged numbers (:func:`points`), :meth:`scalars` a step's training scalars, and both hand them
    to the backend's :meth:`emit`. ``histograms``: whether the backend has them. ``owns``: whether the sink opened its writer / run itself (then :meth:`close`
    closes it; what the user handed in is only flushed)."""

    owns = False
    histograms = True  # whether the backend has histograms (else the spectra are left out)

    def write(self, step: int, probe: str, measurement: "Measurement") -> tuple[int, int]:
        """Export one probe's measurement at ``step`` (metrics as scalars, spectra as histograms where the backend
        has them). Returns how many of each were exported: ``(scalars, histograms)``."""
        scalars, hists = points(probe, measurement)
        hists = hists if self.histograms else {}
        if scalars or hists:
            self.emit(int(step), scalars, hists)
        return len(scalars), len(hists)

    def scalars(self, step: int, values: Mapping[str, float]) -> int:
        """Export training scalars (name -> value, in their own units) at ``step`` as ``specscope/scalars/<name>``,
        finite values only. Returns how many were exported."""
        out = {scalar_tag(k): f for k, v in values.items() if (f := finite(v)) is not None}
        if out:
            self.emit(int(step), out, {})
        return len(out)

    def emit(self, step: int, scalars: dict[str, float], histograms: dict[str, np.ndarray]) -> None:
        """Write tagged scalars and histograms at ``step`` to the backend; returns None."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was written visible; returns None (nothing to do unless the backend buffers)."""

    def close(self) -> None:
        """Flush, and close what the sink opened itself; returns None."""
        self.flush()

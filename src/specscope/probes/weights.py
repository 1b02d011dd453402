"""The weight probe: SPEC section 3 metrics and full spectra of every cataloged matrix."""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from ..spectra import singular_values_many, spectrum_metrics
from ..spectra.compute import METHODS
from .base import Measurement, Probe, ProbeContext, check_choice, check_int, check_kinds
from .sharding import owned_matrices, rank_rows_only
from .schedule import ScheduleLike
from .schedule import paired as paired_schedule

log = logging.getLogger(__name__)


class Weights(Probe):
    """Spectra of weight matrices.

    ``kinds`` restricts the catalog (default: all). ``method`` is ``"gram"`` (float64 Gram +
    ``eigvalsh``) or ``"svd"`` (exact). ``scale`` is the model width used to choose the tail
    window (default: each matrix's short side). ``store_spectra`` keeps the full singular values.
    ``every`` / ``at``: the schedule (:class:`~.base.Probe`; e.g. ``every=log_spaced(1, 10000)`` for
    dense early probing). ``paired``: also measure at ``t + 1`` whenever the schedule is due at ``t``
    (:func:`~.schedule.paired`), so that the SD variation between consecutive optimizer steps is measured
    (SPEC 5.1). Needs ``parameters`` only (no forward pass).
    """

    name = "weights"
    needs = frozenset({"parameters"})

    def __init__(
        self,
        every: ScheduleLike = 25,
        at: Iterable[int] = (),
        kinds: Iterable[str] | None = None,
        method: str = "gram",
        scale: int | None = None,
        store_spectra: bool = True,
        knee: bool = True,
        name: str | None = None,
        paired: bool = False,
    ):
        super().__init__(every, at, name)
        self.paired = bool(paired)
        if self.paired:
            self.schedule = paired_schedule(self.schedule)
        self.kinds = check_kinds(kinds)
        self.method = check_choice("Weights: method", method, METHODS)
        self.scale = None if scale is None else check_int("Weights: scale", scale, 1)
        self.store_spectra = store_spectra
        self.knee = knee
        self._said_empty = False

    def describe(self) -> dict[str, Any]:
        """The base description plus ``kinds``, ``method`` and ``paired``: a dict for ``meta.json``."""
        return {**super().describe(), "kinds": sorted(self.kinds) if self.kinds else None, "method": self.method,
                "paired": self.paired}

    def measure(self, ctx: ProbeContext) -> Measurement:
        """SPEC section 3 metrics of every cataloged matrix of ``kinds`` (and its singular values with
        ``store_spectra``) as one :class:`Measurement`; a NaN row saying why when no matrix matches."""
        refs = [r for r in ctx.catalog if self.kinds is None or r.kind in self.kinds]
        if not refs:  # say so in the store rather than record nothing
            out = Measurement()
            have = sorted({r.kind for r in ctx.catalog})
            why = f"no cataloged matrix of kinds {sorted(self.kinds or ())} in this model (it has {have})"
            out.add_metric(-1, "other", "", "stable_rank", float("nan"), why)
            if not self._said_empty:
                self._said_empty = True
                log.warning("probe %s: %s; nothing measured", self.name, why)
            return rank_rows_only(ctx, out, Measurement())
        if ctx.dist is not None:
            refs, matrices = owned_matrices(ctx, refs, f"{self.name}@{ctx.step}")
        else:
            matrices = {r.name: r.read() for r in refs}
        return self.rows(refs, matrices)

    def rows(self, refs: list, matrices: dict) -> Measurement:
        """The rows of matrices ``refs`` read as ``matrices`` (by ref name): each one's singular values (with
        ``store_spectra``) and SPEC section 3 metrics, as one :class:`Measurement` (empty for no ref)."""
        out = Measurement()
        if not refs:
            return out
        spectra = singular_values_many([(r.name, matrices[r.name]) for r in refs], method=self.method)
        by_len: dict[int, list] = defaultdict(list)
        for ref in refs:
            spec = spectra[ref.name]
            by_len[len(spec.sv)].append((ref, spec))
            if self.store_spectra:
                out.add_spectrum(ref.layer, ref.kind, ref.name, "sv", spec.sv, spec.status, ref.part)
        for members in by_len.values():
            sv = np.stack([s.sv for _, s in members])
            table = spectrum_metrics(sv, scale=self.scale, knee=self.knee)
            for metric, vals in table.values.items():
                sts = table.status[metric]
                for i, (ref, spec) in enumerate(members):
                    st = spec.status if spec.status != "ok" else sts[i]
                    out.add_metric(ref.layer, ref.kind, ref.name, metric, float(vals[i]), st, ref.part)
        return out

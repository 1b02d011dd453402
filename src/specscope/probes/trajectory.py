"""The trajectory probe (SPEC 1.4, 5.5): spectra of the rolling window of parameter updates."""
from __future__ import annotations

import logging

from typing import Any, Iterable

import numpy as np
import torch

from ..errors import ConfigError
from ..models import MatrixRef, unwrap
from ..spectra import spectrum_metrics
from ..streams import CountSketch, TrajectoryWindow
from ..streams.dist import Dist
from .base import Measurement, Probe, ProbeContext, check_choice, check_int, check_kinds
from .sharding import OwnedSlice, owned_coordinates, rank_rows_only
from .schedule import ScheduleLike

log = logging.getLogger(__name__)

MODES = ("exact", "sketch")
TRAJECTORY_METRICS = ("kstar", "gap_ratio", "gap12", "ratio[1]", "ratio[2]", "ratio[3]", "ratio[4]", "k95", "stable_rank")


def _matrix_entry(m: Any) -> tuple[int, str]:
    """One ``(layer, kind)`` of ``Trajectory(matrices=...)``, checked."""
    if not (isinstance(m, (tuple, list)) and len(m) == 2):
        raise ConfigError(f"Trajectory: matrices takes (layer, kind) pairs, got {m!r}")
    layer, kind = m
    check_kinds([kind])
    return check_int("Trajectory: a matrix's layer", layer, 0), kind


class _Track:
    """One trajectory: a set of matrices, their previous state (or its sketch), and the window."""

    def __init__(self, name: str, layer: int, kind: str, refs: list[MatrixRef], window: int, mode: str, k: int, seed: int,
                 store_dtype: torch.dtype):
        self.name, self.layer, self.kind, self.refs = name, layer, kind, refs
        dim = sum(r.numel for r in refs)
        self.sketch = CountSketch(dim, k, seed) if mode == "sketch" else None
        self.window = TrajectoryWindow(window, store_dtype=torch.float64 if self.sketch else store_dtype)
        self.prev: torch.Tensor | None = None
        self.owned: list[OwnedSlice] | None = None  # a distributed job: the coordinates this rank keeps
        self.positions: torch.Tensor | None = None

    def own(self, base: torch.nn.Module, dist: Dist) -> None:
        """Keep only this rank's coordinates from now on (:func:`~.sharding.owned_coordinates`). Returns None."""
        self.owned = owned_coordinates(base, self.refs, dist)
        self.positions = torch.cat([o.positions for o in self.owned])

    def state(self, refs: list[MatrixRef]) -> torch.Tensor:
        if self.owned is not None:
            flat = torch.cat([o.read().to("cpu", torch.float32) for o in self.owned])
            return self.sketch(flat, self.positions) if self.sketch is not None else flat
        flat = torch.cat([r.read().detach().reshape(-1).to("cpu", torch.float32) for r in refs])
        return self.sketch(flat) if self.sketch is not None else flat

    def observe(self, refs: list[MatrixRef] | None = None) -> None:
        """Record the update since the last call; ``refs``: the same matrices read elsewhere (another checkpoint)."""
        cur = self.state(self.refs if refs is None else refs)
        if self.prev is not None:
            self.window.update(cur.to(torch.float64) - self.prev.to(torch.float64))
        self.prev = cur

    def whole(self, dist: Dist, tag: str) -> TrajectoryWindow:
        """The window of the whole update vectors from every rank's share (a collective): exact updates' Grams add
        up; sketched updates are shares of one sketch, added before their Gram is taken."""
        if self.sketch is None:
            return self.window.exchanged(dist, tag)
        rows = torch.stack(self.window.rows) if len(self.window) else torch.zeros(0, self.sketch.k, dtype=torch.float64)
        whole = TrajectoryWindow(self.window.window, store_dtype=torch.float64)
        for row in dist.all_sum(rows, tag):
            whole.update(row)
        return whole

    def measure_into(self, out: Measurement, window: TrajectoryWindow | None = None) -> None:
        """Window metrics and singular values (SPEC 1.4) of ``window`` (default: this track's own) into ``out``."""
        window = self.window if window is None else window
        if len(window) < 2:
            out.add_metric(self.layer, self.kind, self.name, "kstar", float("nan"), f"{len(window)} updates in the window")
            return
        sv = window.singular_values()
        out.add_spectrum(self.layer, self.kind, self.name, "sv", sv)
        table = spectrum_metrics(sv[None, :], knee=False, mle=False)
        for metric in TRAJECTORY_METRICS:
            if metric in table.values:
                out.add_metric(self.layer, self.kind, self.name, metric, float(table.values[metric][0]),
                               str(table.status[metric][0]))
        out.add_metric(self.layer, self.kind, self.name, "window_updates", float(len(window)))
        for j, v in enumerate(window.stability(), start=1):
            out.add_metric(self.layer, self.kind, self.name, f"stability[{j}]", float(v),
                           "ok" if np.isfinite(v) else "window too short")


def build_tracks(catalog: list[MatrixRef], window: int, mode: str, k: int, seed: int, store_dtype: torch.dtype,
                 kinds: Iterable[str] | None, matrices: Iterable[tuple[int, str]], global_track: bool) -> list[_Track]:
    """A global track over every hidden matrix (``layer >= 0``: inside the blocks, or any matrix of a model
    without blocks but the embedding and output head) of ``kinds`` (None: all), plus one per
    ``(layer, kind)`` in ``matrices``."""
    check_choice("trajectory: mode", mode, MODES)
    args = (window, mode, k, seed, store_dtype)
    kinds = frozenset(kinds) if kinds is not None else None
    tracks = []
    if global_track:
        refs = [r for r in catalog if r.layer >= 0 and (kinds is None or r.kind in kinds)]
        if refs:
            tracks.append(_Track("global", -1, "trajectory", refs, *args))
        else:
            log.warning("trajectory: no matrix of kinds %s in the catalog; no global track", sorted(kinds or ()) or "hidden")
    for layer, kind in matrices:
        refs = [r for r in catalog if r.layer == layer and r.kind == kind]
        if not refs:
            raise ValueError(f"no matrix of kind {kind!r} in block {layer}")
        tracks.append(_Track(refs[0].name, layer, kind, refs[:1], *args))
    return tracks


class Trajectory(Probe):
    """Singular values of the last ``window`` updates ``dtheta_t = theta_{t+1} - theta_t``.

    A global trajectory over every hidden matrix of any model (``layer >= 0``: the block matrices,
    or every matrix of a model without blocks but its embedding and output head; ``kinds``
    restricts it), plus one per matrix listed in
    ``matrices`` as ``(layer, kind)``. ``mode="exact"`` keeps the updates (``store_dtype``, on the
    CPU); ``mode="sketch"`` keeps ``k``-dim CountSketches (memory O(window * k) for any model).
    Updates are observed at every monitor step (needs ``update``); metrics and spectra are written on
    the schedule ``every`` / ``at`` (:class:`~.base.Probe`).
    """

    name = "trajectory"
    needs = frozenset({"update"})
    observes_every_step = True

    def __init__(self, window: int = 16, every: ScheduleLike = 25, at: Iterable[int] = (), mode: str = "exact",
                 k: int = 4096, kinds: Iterable[str] | None = None, matrices: Iterable[tuple[int, str]] = (),
                 global_track: bool = True, seed: int = 0, store_dtype: torch.dtype = torch.float32,
                 name: str | None = None):
        super().__init__(every, at, name)
        self.window = check_int("Trajectory: window", window, 2)
        self.mode = check_choice("Trajectory: mode", mode, MODES)
        self.k = check_int("Trajectory: k", k, 1)
        self.seed = check_int("Trajectory: seed", seed, 0)
        self.store_dtype = store_dtype
        if not isinstance(store_dtype, torch.dtype) or not store_dtype.is_floating_point:
            raise ConfigError(f"Trajectory: store_dtype must be a floating torch dtype, got {store_dtype!r}")
        self.kinds = check_kinds(kinds)
        self.matrices = [_matrix_entry(m) for m in matrices]
        self.global_track = global_track
        self.tracks: list[_Track] | None = None  # built at the first observed step

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "window": self.window, "mode": self.mode, "k": self.k,
                "matrices": [list(m) for m in self.matrices]}

    def observe(self, ctx: ProbeContext) -> None:
        """Record the update since the last step in every track (built at the first call; in a distributed job each
        rank keeps its own coordinates). Returns None."""
        if self.tracks is None:
            tracks = build_tracks(ctx.catalog, self.window, self.mode, self.k, self.seed, self.store_dtype,
                                  self.kinds, self.matrices, self.global_track)
            if ctx.dist is not None:
                for t in tracks:
                    t.own(unwrap(ctx.model), ctx.dist)
            self.tracks = tracks
        for t in self.tracks:
            t.observe()

    def measure(self, ctx: ProbeContext) -> Measurement:
        """The window metrics and singular values of every track (in a distributed job: the whole windows from every
        rank's share, written by rank 0), or a NaN row saying why there is none."""
        out = Measurement()
        tag = f"{self.name}@{ctx.step}"
        if ctx.dist is not None:  # every rank in the same state, or every rank records how they differ
            states = ctx.dist.exchange((self._not_ready(), [(t.name, len(t.window)) for t in self.tracks or ()]),
                                       f"{tag}:ready")
            if any(st != states[0] for st in states[1:]):
                raise ValueError(f"ranks differ in their trajectory windows: {states}")
        if not self.tracks:  # say so in the store rather than record nothing
            out.add_metric(-1, "trajectory", "global", "kstar", float("nan"), self._not_ready())
        for t in self.tracks or ():
            window = t.whole(ctx.dist, f"{tag}:{t.name}") if ctx.dist is not None and len(t.window) >= 2 else None
            t.measure_into(out, window)
        return rank_rows_only(ctx, out, Measurement())

    def _not_ready(self) -> str | None:
        """Why no track can be measured (None: they can)."""
        if self.tracks is None:
            return "no step observed yet"
        if not self.tracks:
            return f"no matrix with layer >= 0 of kinds {sorted(self.kinds) if self.kinds else 'any'} in the catalog"
        return None

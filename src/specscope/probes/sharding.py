"""How the probes split their work across the ranks of a distributed job (``ctx.dist``).

- The weight sweep: whole parameters are assigned to ranks, heaviest first to the least loaded
  (:meth:`~specscope.streams.dist.Dist.owners`); a parameter sharded by FSDP2 is gathered, one at a
  time, onto the rank that owns it alone (:func:`owned_matrices`).
- The trajectory: each rank keeps the coordinates of the update vectors it holds: its own rows of
  a sharded parameter (no gather ever), or a contiguous 1/world of the coordinates of replicated
  ones (:func:`owned_coordinates`); inner products of updates are sums over coordinates, so the
  ranks' Grams add up to the whole one.
- The pool: see :func:`specscope.measure.common.rank_share`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..measure.common import rank_share
from ..models import MatrixRef, unwrap
from ..models.sharded import is_dtensor, row_sharded, shard_rows
from ..streams import Stream
from ..streams.dist import Dist
from .base import ProbeContext


#: Elements of sharded parameters gathered onto one rank in one collective (the owner holds them all at once).
GATHER_ELEMENTS = 16 * 2**20


def param_of(base: nn.Module, ref: MatrixRef) -> torch.Tensor | None:
    """The parameter ``ref`` reads from in ``base`` (the unwrapped model), or None when it is not a parameter."""
    try:
        return base.get_parameter(ref.param) if ref.param else None
    except (AttributeError, ValueError):
        return None


def has_sharded(model: nn.Module) -> bool:
    """True when any parameter of ``model`` is a DTensor (FSDP2): its forward passes are collectives, so every rank
    must run as many of them."""
    return any(is_dtensor(p) for p in unwrap(model).parameters())


def _taken(unit: list[MatrixRef], full: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each matrix of ``unit`` (refs of one parameter) from the whole parameter ``full``, by ref name."""
    return {r.name: r.take(full) if r.take is not None else full for r in unit}


def owned_matrices(ctx: ProbeContext, refs: list[MatrixRef], tag: str) -> tuple[list[MatrixRef], dict[str, torch.Tensor]]:
    """The matrices of ``refs`` this rank measures and each one read whole, by ref name. Refs of one parameter (a
    fused ``qkv``'s parts) go to one rank; a sharded parameter is gathered onto that rank (a collective: every rank
    walks the same parameters in catalog order; FSDP2 shards owned by one rank are gathered together, up to
    :data:`GATHER_ELEMENTS` elements a collective). A parameter's cost is that of its spectra: ``numel * min(shape)``
    summed over its matrices."""
    dist: Dist = ctx.dist
    base = unwrap(ctx.model)
    units: dict[str, list[MatrixRef]] = {}
    for r in refs:
        units.setdefault(r.param or r.name, []).append(r)
    costs = [sum(r.numel * min(r.shape) for r in unit) for unit in units.values()]
    owners = dist.owners(costs)
    mine: list[MatrixRef] = []
    matrices: dict[str, torch.Tensor] = {}
    batches: dict[int, list[list[tuple[str, list[MatrixRef], torch.Tensor]]]] = {}  # FSDP2 shards by owner
    for (key, unit), owner in zip(units.items(), owners):
        p = param_of(base, unit[0])
        if p is not None and row_sharded(p, dist.world):
            chunks = batches.setdefault(owner, [[]])
            if chunks[-1] and sum(q.numel() for _, _, q in chunks[-1]) + p.numel() > GATHER_ELEMENTS:
                chunks.append([])
            chunks[-1].append((key, unit, p.detach()))
        elif p is not None and is_dtensor(p):
            full = dist.full_on(p.detach(), owner, f"{tag}:{key}")
            if full is not None:
                matrices.update(_taken(unit, full))
        elif owner == dist.rank:
            matrices.update({r.name: r.read() for r in unit})
        if owner == dist.rank:
            mine.extend(unit)
    for owner in sorted(batches):  # one gather per owner and batch, the same order on every rank
        for chunk in batches[owner]:
            fulls = dist.full_many_on([q for _, _, q in chunk], owner, f"{tag}:{chunk[0][0]}+{len(chunk) - 1}")
            for (_, unit, _), full in zip(chunk, fulls or ()):
                matrices.update(_taken(unit, full))
    return mine, matrices


@dataclass
class OwnedSlice:
    """The coordinates of one matrix of a trajectory that this rank keeps. ``read()`` gives their current values
    (a 1-D tensor); ``positions`` their places in the whole track's update vector (int64)."""

    ref: MatrixRef
    param: torch.Tensor | None
    index: torch.Tensor | None  # into the flat local shard (sharded) or the flat matrix; None: ``lo:hi``
    lo: int
    hi: int
    positions: torch.Tensor

    def read(self) -> torch.Tensor:
        """The kept coordinates' current values, detached, in the parameter's dtype and device."""
        if self.param is not None:  # a sharded parameter: this rank's rows only
            flat = self.param.to_local().detach().reshape(-1)
        else:
            flat = self.ref.read().detach().reshape(-1)
        return flat[self.index.to(flat.device)] if self.index is not None else flat[self.lo:self.hi]


def owned_coordinates(base: nn.Module, refs: list[MatrixRef], dist: Dist) -> list[OwnedSlice]:
    """What this rank keeps of the update vector of the matrices ``refs`` (concatenated, each flattened as
    ``ref.read()`` is): of a parameter FSDP2 shards, the coordinates in this rank's rows; of every other one, this
    rank's contiguous ``1/world`` of the vector. ValueError for a DTensor in another layout."""
    total = sum(r.numel for r in refs)
    c = -(-total // dist.world)
    mine_lo, mine_hi = min(total, dist.rank * c), min(total, (dist.rank + 1) * c)
    out, off = [], 0
    for r in refs:
        p = param_of(base, r)
        if p is not None and row_sharded(p, dist.world):
            a, b = shard_rows(p.shape[0], dist.world, dist.rank)
            row = p.numel() // max(1, p.shape[0])
            idx = torch.arange(p.numel()).reshape(p.shape)
            sel = (r.take(idx) if r.take is not None else idx).reshape(-1)
            keep = (sel >= a * row) & (sel < b * row)
            out.append(OwnedSlice(r, p, sel[keep] - a * row, 0, 0, off + torch.nonzero(keep).reshape(-1)))
        elif p is not None and is_dtensor(p):
            raise ValueError(f"{r.name}: its parameter is a DTensor placed as {tuple(p.placements)}; the trajectory is "
                             "measured shard-local for FSDP2's Shard(0) layout only")
        else:
            lo, hi = max(0, mine_lo - off), max(0, min(r.numel, mine_hi - off))
            lo = min(lo, hi)
            out.append(OwnedSlice(r, None, None, lo, hi, off + torch.arange(lo, hi)))
        off += r.numel
    return out


def rank_rows_only(ctx: ProbeContext, out: Any, empty: Any) -> Any:
    """``out`` on rank 0 (or in one process), ``empty`` on the other ranks: rows every rank computed alike are
    written once."""
    return out if ctx.dist is None or ctx.dist.main else empty


def pool_streams(ctx: ProbeContext, pool: Any, batch: int, tag: str, run: Callable[[Any], dict[Any, Stream]]
                 ) -> dict[Any, Stream] | None:
    """A pool measured by every rank's share of it (:func:`~specscope.measure.common.rank_share`): ``run(samples)``
    measures samples into streams by key; the states are exchanged and folded in rank order. Where the model is
    sharded, a rank with a batch fewer runs the pad batch too (thrown away), so every rank runs as many forward
    passes. Returns the folded streams on rank 0 (which always holds the pool's first batch, so every key), None on
    the other ranks; a failure on any rank raises :class:`~specscope.streams.dist.PeerFailed` on every rank."""
    dist: Dist = ctx.dist
    mine, pad = rank_share(pool, batch, dist.rank, dist.world)
    local: dict[Any, Stream] = {}
    try:
        local = run(mine) if mine is not None else {}
        if pad is not None and has_sharded(ctx.model):
            run(pad)
        states: Any = {k: s.state_dict() for k, s in local.items()}
    except Exception as exc:  # told to every rank by the exchange
        states = exc
    parts = dist.exchange(states, tag)
    if not dist.main:
        return None
    return {k: s.folded([p[k] for p in parts if k in p]) for k, s in local.items()}

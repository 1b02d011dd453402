"""The monitor's own collectives across the ranks of a ``torch.distributed`` job, with a timeout and agreed failures.

:class:`Dist` holds a gloo process group of its own (made once, by every rank, when the monitor
starts), so every collective the monitor issues has the monitor's ``timeout_s`` whatever the
training's backend and timeout. :meth:`Dist.exchange` is the one primitive the probes use: every rank
gives one object and gets all of them in rank order. A rank that failed gives its failure instead
(:class:`Failure`), and then every rank raises the same :class:`PeerFailed`: a probe that fails on one
rank fails on all ranks the same way, and no rank is left waiting in a collective the failed one never
reaches. Each exchange carries a tag and a sequence number; ranks that are out of step (a collective
missed by one of them) or a collective that times out leave the :class:`Dist` *broken*: from then on
every exchange raises :class:`DistBroken` at once, without a collective, so a lost rank costs at most
one timeout, never a hang.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from ..models.sharded import row_sharded, shard_rows

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0


class PeerFailed(RuntimeError):
    """Some rank failed the step every rank was taking; the message names each failed rank and why."""


class DistBroken(RuntimeError):
    """The monitor's collectives stopped: one timed out or ranks were out of step; the message says which."""


@dataclass
class Failure:
    """What a failed rank gives to an exchange: why it failed (a str); ``agreed``: a failure every rank already
    shares (a :class:`PeerFailed` or :class:`DistBroken`), told once rather than once per rank."""

    why: str
    agreed: bool = False


def failure(exc: BaseException) -> Failure:
    """``exc`` as the :class:`Failure` a rank gives to an exchange."""
    if isinstance(exc, (PeerFailed, DistBroken)):
        return Failure(str(exc), agreed=True)
    return Failure(f"{type(exc).__name__}: {exc}")


def initialized_world() -> tuple[int, int] | None:
    """``(rank, world)`` of an initialized ``torch.distributed`` process group of two or more ranks; None otherwise."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return dist.get_rank(), dist.get_world_size()


def failures_said(failures: list[Failure | None]) -> str:
    """One line for the ranks' failures (None: that rank did not fail): each distinct reason once, after the ranks
    that gave it (``"rank 1: ValueError: x"``, ``"ranks 0, 1: ValueError: x"``); an agreed failure as it is. An empty
    str when no rank failed."""
    by_why: dict[str, list[int]] = {}
    for r, f in enumerate(failures):
        if f is not None:
            by_why.setdefault(f.why if not f.agreed else f"\0{f.why}", []).append(r)
    said = []
    for why, ranks in by_why.items():
        if why.startswith("\0"):
            said.append(why[1:])
        else:
            said.append(f"{'rank' if len(ranks) == 1 else 'ranks'} {', '.join(map(str, ranks))}: {why}")
    return "; ".join(said)


@dataclass
class Dist:
    """This rank's place in the job (``rank`` of ``world``) and the monitor's own gloo ``group`` with ``timeout_s``.

    ``broken``: None while the collectives work, else why they stopped."""

    rank: int
    world: int
    group: Any = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    broken: str | None = None
    _seq: int = field(default=0, repr=False)

    @classmethod
    def start(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> "Dist | None":
        """A :class:`Dist` over every rank of the initialized process group (a collective: every rank calls it),
        or None in a single process (no group, or a group of one)."""
        where = initialized_world()
        if where is None:
            return None
        import torch.distributed as dist

        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=float(timeout_s)))
        return cls(where[0], where[1], group, float(timeout_s))

    @property
    def main(self) -> bool:
        """True on rank 0, the rank that writes the run store."""
        return self.rank == 0

    def stop(self, why: str) -> DistBroken:
        """Stop the monitor's collectives for good, saying ``why`` (logged once, on this rank); returns the
        :class:`DistBroken` to raise."""
        if self.broken is None:
            self.broken = why
            log.error("specscope: distributed measuring stopped on rank %d: %s", self.rank, why)
        return DistBroken(f"distributed measuring stopped: {self.broken}")

    def exchange(self, obj: Any, tag: str) -> list[Any]:
        """Every rank's ``obj`` (picklable; tensors are sent as CPU copies by the caller) in rank order. ``obj`` may be
        a :class:`Failure` or an exception: then every rank raises :class:`PeerFailed` naming the failed ranks.
        ``tag`` names the step every rank takes (``"weights@25"``); ranks out of step, a timeout, or an earlier
        breakage raise :class:`DistBroken`."""
        if self.broken is not None:
            raise DistBroken(f"distributed measuring stopped: {self.broken}")
        import torch.distributed as dist

        if isinstance(obj, BaseException):
            obj = failure(obj)
        self._seq += 1
        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, (tag, self._seq, obj), group=self.group)
        except Exception as exc:  # a timeout, a lost peer
            raise self.stop(f"{tag}: {type(exc).__name__}: {exc}") from None
        steps = sorted({(t, s) for t, s, _ in out})
        if len(steps) != 1:
            raise self.stop(f"ranks out of step at {tag}: {steps}")
        failed = failures_said([v if isinstance(v, Failure) else None for _, _, v in out])
        if failed:
            raise PeerFailed(failed)
        return [v for _, _, v in out]

    def close(self) -> None:
        """Release the monitor's group (local, not a collective; after it every exchange raises
        :class:`DistBroken`). Returns None."""
        if self.group is None:
            return
        group, self.group = self.group, None
        self.broken = self.broken or "the monitor was closed"
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group(group)
        except Exception as exc:  # never break the user's shutdown
            log.debug("releasing the monitor's process group failed: %s", exc)

    def all_sum(self, t: torch.Tensor, tag: str) -> torch.Tensor:
        """The sum of every rank's ``t`` (same shape everywhere), float64 on the CPU; raises as :meth:`exchange`."""
        parts = self.exchange(t.detach().to("cpu", torch.float64), tag)
        return torch.stack(parts).sum(0)

    def owners(self, costs: list[float]) -> list[int]:
        """The rank that owns each of ``len(costs)`` work items: longest first to the least loaded rank (ties: the
        lower rank), the same on every rank. A list of ints."""
        load = [0.0] * self.world
        owner = [0] * len(costs)
        for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
            r = min(range(self.world), key=lambda r: (load[r], r))
            owner[i] = r
            load[r] += float(costs[i])
        return owner

    def full_on(self, t: torch.Tensor, owner: int, tag: str) -> torch.Tensor | None:
        """The whole of a sharded tensor on rank ``owner`` (None on the others): a collective, every rank calls it.

        A plain tensor is returned as it is on the owner (nothing sent). FSDP2's layout (:func:`row_sharded`) is
        gathered onto the owner alone through the monitor's group (:meth:`full_many_on`); any other DTensor layout
        through ``full_tensor()`` (the mesh's own collectives and timeout)."""
        from ..models.sharded import is_dtensor

        if not is_dtensor(t):
            return t if self.rank == owner else None
        if not row_sharded(t, self.world):
            full = t.full_tensor()
            return full if self.rank == owner else None
        got = self.full_many_on([t], owner, tag)
        return None if got is None else got[0]

    def full_many_on(self, ts: list[torch.Tensor], owner: int, tag: str) -> list[torch.Tensor] | None:
        """The whole of each of ``ts`` (DTensors in FSDP2's layout, :func:`row_sharded`) on rank ``owner`` (None on
        the others), in one gather through the monitor's group: each rank sends its rows of every tensor, padded to
        the longest rank's, as one flat buffer (float64 if any tensor is, else float32). A collective."""
        if self.broken is not None:
            raise DistBroken(f"distributed measuring stopped: {self.broken}")
        import torch.distributed as dist

        locals_ = [t.to_local().detach() for t in ts]
        wire = torch.float64 if any(x.dtype == torch.float64 for x in locals_) else torch.float32
        padded = [shard_rows(t.shape[0], self.world, 0)[1] * (t.numel() // max(1, t.shape[0])) for t in ts]
        buf = torch.zeros(sum(padded), dtype=wire)
        off = 0
        for x, size in zip(locals_, padded):
            buf[off: off + x.numel()] = x.reshape(-1).to("cpu", wire)
            off += size
        got = [torch.empty_like(buf) for _ in range(self.world)] if self.rank == owner else None
        try:
            dist.gather(buf, got, dst=owner, group=self.group)
        except Exception as exc:
            raise self.stop(f"{tag}: {type(exc).__name__}: {exc}") from None
        if got is None:
            return None
        out, off = [], 0
        for t, x, size in zip(ts, locals_, padded):
            row = t.numel() // max(1, t.shape[0])
            pieces = [g[off: off + (b - a) * row] for g, (a, b) in
                      zip(got, (shard_rows(t.shape[0], self.world, r) for r in range(self.world)))]
            out.append(torch.cat(pieces).reshape(t.shape).to(device=x.device, dtype=x.dtype))
            off += size
        return out

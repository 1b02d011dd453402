"""Sharded parameters (``torch.distributed`` DTensors, as FSDP2's ``fully_shard`` leaves them): what a rank holds.

Pure introspection, no collective: whether a tensor is a DTensor, and for the layout FSDP2 uses
(``Shard(0)`` on a one-dimensional device mesh over every rank) which rows of dim 0 this rank holds.
"""
from __future__ import annotations

from typing import Any

import torch


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (a sharded or replicated parameter of FSDP2 / tensor parallel)."""
    if not isinstance(t, torch.Tensor) or type(t) is torch.Tensor:
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a build without torch.distributed
        return False
    return isinstance(t, DTensor)


def whole(t: Any) -> Any:
    """``t`` itself, or for a DTensor its whole tensor (``full_tensor()``: a collective on its mesh, so every rank
    of the mesh reads it too; the distributed monitor never reads a sharded parameter this way)."""
    return t.full_tensor() if is_dtensor(t) else t


def row_sharded(t: Any, world: int) -> bool:
    """True when ``t`` is a DTensor sharded along dim 0 (``Shard(0)``) on a one-dimensional mesh of all ``world``
    ranks, mesh coordinate = global rank (FSDP2's layout): each rank holds a contiguous block of rows."""
    if not is_dtensor(t):
        return False
    from torch.distributed.tensor import Shard

    mesh = t.device_mesh
    return (mesh.ndim == 1 and tuple(t.placements) == (Shard(0),) and mesh.mesh.numel() == world
            and mesh.mesh.tolist() == list(range(world)))


def shard_rows(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an ``n``-row tensor that rank ``rank`` of ``world`` holds under ``Shard(0)`` (the
    ``torch.chunk`` split: blocks of ``ceil(n / world)`` rows, the last ranks' shorter or empty), ints."""
    c = -(-int(n) // int(world))
    lo = min(n, rank * c)
    return lo, min(n, lo + c)


FSDP1 = ("not measured under FSDP1 (FullyShardedDataParallel): its flattened, sharded parameters hold no matrix to "
         "read; use FSDP2 (fully_shard) or DDP")


def unsupported_sharding(model: torch.nn.Module) -> str | None:
    """Why the parameters of ``model`` cannot be read as matrices (None: they can): :data:`FSDP1` when the model is,
    holds, or was flattened by FSDP1 (a ``FullyShardedDataParallel`` module, or a parameter carrying FSDP1's
    ``_fsdp_flattened`` flag): each rank keeps a share of flattened parameters, so a module's weight is not its
    matrix outside FSDP1's own gathers. DDP, FSDP2 (DTensor parameters) and unwrapped models give None."""
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        return FSDP1
    if any(getattr(p, "_fsdp_flattened", False) for p in model.parameters()):
        return FSDP1
    return None

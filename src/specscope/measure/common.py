"""What every measurement shares: the probe pool, how the model is called, per-sample losses.

A **pool** is one tensor (token ids ``N x T``, float pixels ``N x C x H x W``, audio, features)
or a tuple / dict of tensors (``(x, y)`` pairs, a tokenizer's ``BatchEncoding``), every tensor
batched along dim 0. Batches keep the pool's dtype: a float pool is never cast; a signed
integer pool (token ids) is sent as ``int64``, as embeddings expect.

``forward_fn(model, batch) -> output`` says how to call the model on a batch; the default is
``model(batch)`` for a tensor, ``model(*batch)`` for a tuple and ``model(**batch)`` for a dict.
``loss_fn(output, batch) -> losses`` returns one loss per sample (shape ``(B,)``); the default,
:func:`next_token_losses`, applies only to a pool of token ids.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..models.modes import kept_modes, kept_rng
from ..spectra.compute import desc_eigvalsh  # noqa: F401  (ss.measure.desc_eigvalsh)

Pool = Union[torch.Tensor, tuple, Mapping]
ForwardFn = Callable[[nn.Module, Any], Any]
LossFn = Callable[[Any, Any], torch.Tensor]
_SIGNED_INT = (torch.int8, torch.int16, torch.int32, torch.int64)


def as_pool(pool: Any) -> Pool:
    """A pool as tensors: tuples and dicts keep their structure; anything else goes through ``torch.as_tensor``."""
    if isinstance(pool, torch.Tensor):
        return pool
    if isinstance(pool, Mapping):
        return {k: as_pool(v) for k, v in pool.items()}
    if isinstance(pool, tuple):
        return _rebuild(pool, [as_pool(v) for v in pool])
    return torch.as_tensor(pool)


def _rebuild(seq: tuple | list, items: list) -> tuple | list:
    return type(seq)(*items) if hasattr(seq, "_fields") else type(seq)(items)  # named tuples take fields


def tree_map(fn: Callable[[torch.Tensor], Any], pool: Pool) -> Any:
    """``fn`` applied to every tensor of a pool or batch, its structure kept."""
    if isinstance(pool, torch.Tensor):
        return fn(pool)
    if isinstance(pool, Mapping):
        return {k: tree_map(fn, v) for k, v in pool.items()}
    if isinstance(pool, (tuple, list)):
        return _rebuild(pool, [tree_map(fn, v) for v in pool])
    raise TypeError(f"a pool holds tensors, tuples and dicts, not {type(pool).__name__}")


def leaves(pool: Pool) -> list[torch.Tensor]:
    """The tensors of a pool (a tensor, or a tuple / list / dict of them), in order, as a list."""
    out: list[torch.Tensor] = []
    tree_map(out.append, pool)
    return out


def pool_len(pool: Pool) -> int:
    """Number of samples (the common size of dim 0)."""
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in leaves(pool)}
    if not sizes:
        raise ValueError("the pool holds no tensor")
    if -1 in sizes or len(sizes) > 1:
        raise ValueError(f"every tensor of the pool must be batched along dim 0 with one size, got {sorted(sizes)}")
    return sizes.pop()


def pool_rows(pool: Pool, lo: int, hi: int | None) -> Pool:
    """Samples ``lo:hi`` of a pool."""
    return tree_map(lambda t: t[lo:hi], pool)


def rank_share(pool: Pool, batch: int, rank: int, world: int) -> tuple[Pool | None, Pool | None]:
    """This rank's share of a pool measured in batches of ``batch``: the pool's batches are dealt round-robin (batch
    ``i`` to rank ``i % world``), so a rank's samples batched by ``batch`` are exactly its batches of the whole pool.
    Returns ``(samples or None when it has no batch, pad)``: ``pad`` is the pool's first batch for a rank with one
    batch fewer than the busiest (run and thrown away where every rank must run as many forward passes), else None."""
    n, b = pool_len(pool), max(1, int(batch))
    count = -(-n // b)
    mine = list(range(rank, count, world))
    pad = pool_rows(pool, 0, b) if len(mine) < -(-count // world) else None
    if not mine:
        return None, pad
    idx = torch.cat([torch.arange(i * b, min(n, (i + 1) * b)) for i in mine])
    return tree_map(lambda t: t[idx.to(t.device)], pool), pad


def pool_shapes(pool: Pool) -> Any:
    """Shapes for ``describe()``: a list, or the pool's structure of lists."""
    return tree_map(lambda t: list(t.shape), pool)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.long if t.dtype in _SIGNED_INT else None)


def _batches(pool: Any, batch: int, device: torch.device) -> Iterator[Pool]:
    """Batches of ``batch`` samples on ``device``; float tensors keep their dtype, signed integers become int64."""
    pool = as_pool(pool)
    n = pool_len(pool)
    for i in range(0, n, max(1, int(batch))):
        yield tree_map(lambda t: _to_device(t, device), pool_rows(pool, i, i + batch))


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def call_model(model: nn.Module, batch: Pool) -> Any:
    """The default ``forward_fn``: ``model(batch)``, ``model(*batch)`` for a tuple, ``model(**batch)`` for a dict."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def first_tensor(out: Any) -> torch.Tensor | None:
    """A tensor output, or the first tensor of a tuple / list / dict / HF ``ModelOutput``."""
    if isinstance(out, torch.Tensor):
        return out
    items = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    for item in items:
        t = first_tensor(item)
        if t is not None:
            return t
    return None


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find logits in the model output ({type(out).__name__})")


def next_token_losses(output: Any, batch: torch.Tensor) -> torch.Tensor:
    """The default ``loss_fn`` for a token pool: mean next-token cross-entropy of each sequence (B, T) -> (B,)."""
    logits = _logits(output)[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="none")
    return ce.view(batch.shape[0], -1).mean(dim=1)


def sequence_losses(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence of ``x`` (B, T): shape (B,)."""
    return next_token_losses(model(x), x)


def resolve_loss(loss_fn: LossFn | None, pool: Any) -> LossFn:
    """``loss_fn``, or the next-token default when the pool is token ids; otherwise a clear error."""
    if loss_fn is not None:
        return loss_fn
    pool = as_pool(pool)
    if isinstance(pool, torch.Tensor) and pool.dtype in _SIGNED_INT and pool.ndim == 2:
        return next_token_losses
    what = (f"a {pool.dtype} pool of shape {tuple(pool.shape)}" if isinstance(pool, torch.Tensor)
            else f"a {type(pool).__name__} pool")
    raise ValueError(f"per-sample gradients need loss_fn(output, batch) -> per-sample losses of shape (B,) for {what}; "
                     "the default next-token cross-entropy applies only to a pool of token ids (an integer N x T "
                     "tensor)")


class LossShapeError(ValueError):
    """``loss_fn`` did not return one loss per sample."""


def per_sample(losses: Any, n: int) -> torch.Tensor:
    """Check that ``loss_fn`` returned one loss per sample; shape ``(n,)``."""
    if not isinstance(losses, torch.Tensor):
        raise LossShapeError(f"loss_fn must return a tensor of per-sample losses, got {type(losses).__name__}")
    if losses.ndim == 0 or losses.shape[0] != n or losses.numel() != n:
        raise LossShapeError(f"loss_fn must return one loss per sample, shape (B,) for a batch of B (here B={n}), "
                             f"got shape {tuple(losses.shape)} (use reduction='none' and average over all but the "
                             "batch dim)")
    return losses.reshape(n)


@contextlib.contextmanager
def measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd graph inside; modes and RNG states restored on exit."""
    with kept_rng(), torch.no_grad(), kept_modes(model, eval=True):
        yield

"""Matrix catalog: every 2-D weight of a model named by ``(layer, kind)`` (SPEC 1.1).

Works on a live ``nn.Module`` (:func:`catalog`) or on stored tensors read lazily from a file
(:func:`catalog_stored`), with the same family rules (see :mod:`.families`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .families import Stored, gpt2_conv1d, split


@dataclass(frozen=True)
class MatrixRef:
    """One cataloged matrix. ``read()`` returns it as ``d_out x d_in`` (a view where possible)."""

    name: str
    layer: int  # block index; -1 for matrices outside the blocks
    kind: str
    read: Callable[[], torch.Tensor]
    shape: tuple[int, int]
    source: str = ""  # the stored weight it comes from (module name)
    # when read from a file: row blocks of a matrix with the same singular values, and its shape
    blocks: Callable[[], Iterator[torch.Tensor]] | None = None
    blocks_shape: tuple[int, int] | None = None
    out_index: torch.Tensor | None = None  # which outputs of module `source` this matrix produces (None: all)


def catalog_stored(stored: Iterable[Stored], n_heads: int | None = None) -> list[MatrixRef]:
    """Catalog stored weights (already marked transposed where they are ``d_in x d_out``)."""
    refs = []
    for st in stored:
        for p in split(st, n_heads):
            refs.append(MatrixRef(p.name, p.layer, p.kind, p.read, p.shape, p.module, p.blocks, p.blocks_shape, p.out_index))
    return refs


def _model_type(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None)


def _n_heads(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for attr in ("num_attention_heads", "n_head", "n_heads"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    return None


def catalog(model: nn.Module) -> list[MatrixRef]:
    """Every 2-D weight of ``model``, each once (tied weights are listed under their first name).

    Known families get their kinds, block indices and fused splits; any other 2-D weight is
    cataloged as ``other``, so a model no rule knows still works.
    """
    stored: list[Stored] = []
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or id(w) in seen:
            continue
        seen.add(id(w))
        conv1d = type(mod).__name__ == "Conv1D"
        stored.append(Stored(mod_name, (int(w.shape[0]), int(w.shape[1])), (lambda w=w: w.detach()), conv1d))
    return catalog_stored(stored, _n_heads(model))


def mark_conv1d(names_shapes: dict[str, tuple[int, int]], model_type: str | None) -> dict[str, bool]:
    """For weights read from a file: which are HF GPT-2 ``Conv1D`` (``d_in x d_out``)."""
    qkv = [s for n, s in names_shapes.items() if n.endswith("attn.c_attn")]
    qkv_conv1d = bool(qkv) and qkv[0][1] == 3 * qkv[0][0]
    return {n: gpt2_conv1d(n, model_type, s, qkv_conv1d) for n, s in names_shapes.items()}

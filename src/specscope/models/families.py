"""Fused and packed parameters split into cataloged matrices (SPEC 1.1).

A family rule turns one stored parameter (its name, shape and storage orientation) into one
or more matrices, each with a ``take`` that maps the stored tensor to the matrix:

- HF GPT-2 ``Conv1D`` stores ``d_in x d_out`` and is transposed; its ``c_attn`` (and
  nanoGPT's ``nn.Linear`` ``c_attn``) holds ``[q; k; v]`` in its output rows.
- GPT-NeoX / Pythia ``query_key_value`` (``3d x d``) interleaves rows per head:
  ``(n_heads, 3, head_dim, d)``, take ``[:, 0]``, ``[:, 1]``, ``[:, 2]``.
- PyTorch ``nn.MultiheadAttention`` ``in_proj_weight`` and timm ``attn.qkv`` (``3d x d``):
  rows ``[q; k; v]``.
- Packed experts (one ``n_experts x d_out x d_in`` parameter under ``experts``, Mixtral /
  Qwen-MoE / DeepSeek in transformers 5): one matrix per expert (``part``), a fused
  ``gate_up_proj`` split into its gate (first half of the rows) and up halves (alternate
  rows for GPT-OSS). Stored ``n_experts x d_in x d_out`` (Llama 4, GPT-OSS: recognized from
  the config's hidden size) is transposed.
- Recurrent ``weight_ih_l{n}`` / ``weight_hh_l{n}``: one matrix per gate (``part``): LSTM
  ``i f g o``, GRU ``r z n``; the gate count is read off ``weight_hh``'s shape (``G h x h``).
- Convolutions (a ``weight`` of 3 to 5 dims, ``c_out x c_in x k...``): one ``c_out x c_in``
  matrix per kernel position, pooled into one spectrum (WeightWatcher's convention).
- Any other parameter of 3 or more dims: its leading dims flattened into rows.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from .kinds import block_layer, classify, expert_index

_RNN = re.compile(r"^weight_(?P<which>ih|hh)_l(?P<l>\d+)(?:_reverse)?$")
_FUSED_QKV = re.compile(r"(?:^|\.)(?:attn|attention)\.c_attn$")
_NEOX_QKV = re.compile(r"(?:^|\.)attention\.query_key_value$")
_ROWS_QKV = re.compile(r"(?:^|\.)(?:attn|attention|self_attn|mixer)\.(?:qkv|Wqkv|qkv_proj)$")
# Module names HF GPT-2 implements as Conv1D (d_in x d_out storage).
_GPT2_CONV1D = re.compile(r"(?:^|\.)h\.\d+\.(?:attn\.(?:c_attn|c_proj)|mlp\.(?:c_fc|c_proj))$")
_EXPERT_LEAF = {"gate_up_proj": "gate_up", "w13": "gate_up", "gate_up": "gate_up",
                "gate_proj": "mlp_gate", "w1": "mlp_gate", "gate": "mlp_gate",
                "up_proj": "mlp_in", "w3": "mlp_in", "up": "mlp_in",
                "down_proj": "mlp_out", "w2": "mlp_out", "down": "mlp_out"}
GATE_LABELS = {4: "ifgo", 3: "rzn"}
_INTERLEAVED_GATE_UP = ("gpt_oss",)  # gate / up rows alternate in the fused expert weight
QKV = ("q", "k", "v")
_SEPARATE_QKV = {"q_proj_weight": "q", "k_proj_weight": "k", "v_proj_weight": "v"}


@dataclass(frozen=True)
class Stored:
    """One stored parameter: its (unwrapped) name, shape, a loader, and how it is stored.

    ``transposed``: a 2-D weight stored ``d_in x d_out`` (HF GPT-2 ``Conv1D``). ``param``: the
    name to reach it by (a live model's own parameter name when the display name was
    unwrapped); defaults to ``name``.
    """

    name: str
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]
    transposed: bool = False
    param: str = ""


@dataclass(frozen=True)
class Context:
    """What the split rules need to know about the whole model (the same live and offline): attention heads, hidden
    width, the modules holding experts, the gates of each recurrent layer, and the model type."""

    n_heads: int | None = None
    hidden: int | None = None
    moe_parents: frozenset[str] = frozenset()
    rnn_gates: dict[tuple[str, int], int] | None = None  # (module, layer) -> gates
    model_type: str | None = None


@dataclass(frozen=True)
class Part:
    """A cataloged matrix before layers are settled: ``layer`` is None outside any block; ``take`` maps the stored
    tensor to this matrix (``d_out x d_in``, or ``slices x c_out x c_in``); ``unit`` is the depth position it shares
    with the other parts of one module in a model without blocks."""

    name: str
    layer: int | None
    kind: str
    shape: tuple[int, int]
    take: Callable[[torch.Tensor], torch.Tensor]
    unit: str  # parts of one unit share a depth position in models without blocks
    part: int = -1
    slices: int = 1
    out_index: torch.Tensor | None = None


def split_name(name: str) -> tuple[str, str]:
    """``(module, leaf)`` of a parameter name: the text before and after its last dot (module ``""`` without one)."""
    mod, _, leaf = name.rpartition(".")
    return mod, leaf


def matrix_name(name: str) -> str:
    """A matrix's display name (a str): the module name for a ``weight``, else the parameter name."""
    mod, leaf = split_name(name)
    return mod if leaf == "weight" and mod else name


def gpt2_conv1d(module: str, model_type: str | None, shape: tuple[int, ...], qkv_conv1d: bool | None) -> bool:
    """Whether a stored weight is an HF GPT-2 ``Conv1D`` (known from the config, or from c_attn's shape): a bool."""
    if len(shape) != 2 or not _GPT2_CONV1D.search(module):
        return False
    if model_type is not None:
        return model_type == "gpt2"
    return bool(qkv_conv1d)


def rnn_gates(shapes: dict[str, tuple[int, ...]]) -> dict[tuple[str, int], int]:
    """Gates per recurrent layer, read off ``weight_hh_l{n}`` (``G h x h``): a dict ``(module, layer) -> gates``,
    4 for an LSTM, 3 for a GRU, else 1."""
    out = {}
    for name, shape in shapes.items():
        mod, leaf = split_name(name)
        m = _RNN.match(leaf)
        if m and m.group("which") == "hh" and len(shape) == 2 and shape[1]:
            ratio = shape[0] / shape[1]
            out[(mod, int(m.group("l")))] = int(ratio) if ratio in (3, 4) else 1
    return out


def moe_parents(names) -> frozenset[str]:
    """Modules with an ``experts`` child (their ``gate`` is the router): a frozenset of module names."""
    found = set()
    for n in names:
        i = n.find(".experts.")
        while i >= 0:
            found.add(n[:i])
            i = n.find(".experts.", i + 1)
    return frozenset(found)


def _rows(i: int, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t[i * n:(i + 1) * n]


def split(st: Stored, ctx: Context) -> list[Part]:
    """The cataloged matrices of one stored parameter (of 2 or more dims): a list of :class:`Part`, several for a
    fused (q/k/v, gate/up), per-expert or recurrent-gate weight, else one (a convolution: one part whose kernel
    positions are its slices)."""
    mod, leaf = split_name(st.name)
    shape = st.shape
    rnn = _RNN.match(leaf)
    if rnn and len(shape) == 2:
        return _split_rnn(st, mod, rnn, ctx)
    if len(shape) == 3 and (mod.endswith(".experts") or mod == "experts") and leaf != "weight":
        return _split_experts(st, mod, leaf, ctx)
    if len(shape) >= 3:
        if leaf == "weight":
            c_out, c_in, k = shape[0], shape[1], math.prod(shape[2:])
            return [Part(mod, block_layer(st.name), "conv", (c_out, c_in),
                         lambda t: t.reshape(c_out, c_in, k).permute(2, 0, 1), mod, slices=k)]
        layer, kind = classify(st.name, ctx.moe_parents)
        return [Part(st.name, layer, kind, (math.prod(shape[:-1]), shape[-1]), lambda t: t.reshape(-1, t.shape[-1]), mod)]
    return _split_2d(st, mod, leaf, ctx)


def _split_2d(st: Stored, mod: str, leaf: str, ctx: Context) -> list[Part]:
    name = matrix_name(st.name)
    if st.transposed:
        out_shape = (st.shape[1], st.shape[0])
        base = lambda t: t.T  # noqa: E731
    else:
        out_shape = (st.shape[0], st.shape[1])
        base = lambda t: t  # noqa: E731
    unit = mod if leaf == "weight" else st.name
    layer = block_layer(st.name)
    d3, d = out_shape
    if leaf in _SEPARATE_QKV:  # nn.MultiheadAttention with kdim / vdim != embed_dim
        return [Part(st.name, layer, _SEPARATE_QKV[leaf], out_shape, base, unit)]
    fused = leaf == "in_proj_weight" or (leaf == "weight" and (_FUSED_QKV.search(mod) or _ROWS_QKV.search(mod)))
    if fused and d3 == 3 * d:
        n = d
        return [Part(f"{name}[{k}]", layer, k, (n, d), (lambda t, i=i: base(t)[i * n:(i + 1) * n]), unit,
                     out_index=torch.arange(i * n, (i + 1) * n) if leaf == "weight" else None)
                for i, k in enumerate(QKV)]
    if leaf == "weight" and _NEOX_QKV.search(mod) and d3 % 3 == 0 and ctx.n_heads and (d3 // 3) % ctx.n_heads == 0:
        h, hd = ctx.n_heads, d3 // 3 // ctx.n_heads
        order = torch.arange(d3).reshape(h, 3, hd)
        return [Part(f"{name}[{k}]", layer, k, (d3 // 3, d),
                     (lambda t, i=i: base(t).reshape(h, 3, hd, d)[:, i].reshape(h * hd, d)), unit,
                     out_index=order[:, i].reshape(-1)) for i, k in enumerate(QKV)]
    layer, kind = classify(name, ctx.moe_parents)
    return [Part(name, layer, kind, out_shape, base, unit, part=expert_index(name))]


def _split_rnn(st: Stored, mod: str, m: re.Match, ctx: Context) -> list[Part]:
    n_layer = int(m.group("l"))
    gates = (ctx.rnn_gates or {}).get((mod, n_layer), 1)
    kind = "rnn_" + m.group("which")
    rows, cols = st.shape
    unit = f"{mod}#l{n_layer}"
    layer = block_layer(st.name)
    if gates == 1 or rows % gates:
        return [Part(st.name, layer, kind, (rows, cols), lambda t: t, unit)]
    h = rows // gates
    labels = GATE_LABELS[gates]
    return [Part(f"{st.name}[{labels[g]}]", layer, kind, (h, cols), _rows(g, h), unit, part=g) for g in range(gates)]


def _split_experts(st: Stored, mod: str, leaf: str, ctx: Context) -> list[Part]:
    n_exp, a, b = st.shape
    role = _EXPERT_LEAF.get(leaf)
    layer = block_layer(st.name)
    unit = mod
    hidden = ctx.hidden
    if role == "mlp_out":
        transposed = bool(hidden) and a != hidden and b == hidden
    else:
        transposed = bool(hidden) and b != hidden and a == hidden
    d_out, d_in = (b, a) if transposed else (a, b)
    interleaved = ctx.model_type in _INTERLEAVED_GATE_UP

    def expert(e: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return (lambda t: t[e].T) if transposed else (lambda t: t[e])

    parts = []
    for e in range(n_exp):
        if role == "gate_up" and d_out % 2 == 0:
            f = d_out // 2
            for j, (label, kind) in enumerate((("gate", "mlp_gate"), ("up", "mlp_in"))):
                rows = slice(j, None, 2) if interleaved else slice(j * f, (j + 1) * f)
                parts.append(Part(f"{st.name}[{e}:{label}]", layer, kind, (f, d_in),
                                  (lambda t, e=e, rows=rows: expert(e)(t)[rows]), unit, part=e))
        else:
            kind = role if role in ("mlp_gate", "mlp_in", "mlp_out") else "other"
            parts.append(Part(f"{st.name}[{e}]", layer, kind, (d_out, d_in), expert(e), unit, part=e))
    return parts

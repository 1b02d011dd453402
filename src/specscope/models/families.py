"""Naming rules and fused-projection splits of the architecture families (SPEC 1.1).

A family adapter turns one stored 2-D weight (its parameter name, shape and storage
orientation) into one or more cataloged matrices ``(layer, kind, read)``:

- HF GPT-2: ``Conv1D`` stores ``d_in x d_out`` and is transposed on read; ``c_attn``
  (``d x 3d``) holds ``[q | k | v]`` in its columns.
- nanoGPT: ``c_attn`` is an ``nn.Linear`` (``3d x d``) with ``[q; k; v]`` in its rows.
- GPT-NeoX / Pythia: ``query_key_value`` (``3d x d``) interleaves rows per head:
  reshape to ``(n_heads, 3, head_dim, d)`` and take ``[:, 0]``, ``[:, 1]``, ``[:, 2]``.
- LLaMA / Mistral / Qwen2, the reference GPT: separate projections, by name.
- Anything else: every 2-D weight as ``other``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

log = logging.getLogger(__name__)

KINDS = ("q", "k", "v", "o", "mlp_in", "mlp_gate", "mlp_out", "embed", "lm_head", "other")
BLOCK_KINDS = KINDS[:7]

# Block container names used by common families, then the block index.
_BLOCK = r"(?:^|\.)(?:blocks|h|layers|layer)\.(?P<layer>\d+)\."
_ATTN = r".*(?:attn|attention)\."
_MLP = r".*(?:mlp|ffn|feed_forward)\."
NAME_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), k) for p, k in [
    (_BLOCK + _ATTN + r"(?:q|q_proj|query|c_q|wq)$", "q"),
    (_BLOCK + _ATTN + r"(?:k|k_proj|key|c_k|wk)$", "k"),
    (_BLOCK + _ATTN + r"(?:v|v_proj|value|c_v|wv)$", "v"),
    (_BLOCK + _ATTN + r"(?:o|o_proj|out_proj|c_proj|dense|wo)$", "o"),
    (_BLOCK + _MLP + r"(?:fc|up_proj|c_fc|fc1|up|dense_h_to_4h)$", "mlp_in"),
    (_BLOCK + _MLP + r"(?:gate|gate_proj|w1)$", "mlp_gate"),
    (_BLOCK + _MLP + r"(?:proj|down_proj|c_proj|fc2|down|w2|dense_4h_to_h)$", "mlp_out"),
    (r"(?:^|\.)(?:tok_emb|wte|embed_tokens|word_embeddings|embed_in)$", "embed"),
    (r"(?:^|\.)(?:lm_head|embed_out)$", "lm_head"),
]]
_ANY_LAYER = re.compile(_BLOCK)
_FUSED_QKV = re.compile(_BLOCK + _ATTN + r"c_attn$")
_NEOX_QKV = re.compile(_BLOCK + _ATTN + r"query_key_value$")
# Module names HF GPT-2 implements as Conv1D (d_in x d_out storage).
_GPT2_CONV1D = re.compile(_BLOCK + r"(?:attn\.(?:c_attn|c_proj)|mlp\.(?:c_fc|c_proj))$")


def classify(module_name: str) -> tuple[int, str]:
    """``(layer, kind)`` for a module name; unknown names are ``other``."""
    for pattern, kind in NAME_RULES:
        m = pattern.search(module_name)
        if m:
            layer = m.groupdict().get("layer")
            return (int(layer) if layer is not None else -1), kind
    m = _ANY_LAYER.search(module_name)
    return (int(m.group("layer")) if m else -1), "other"


@dataclass(frozen=True)
class Stored:
    """One stored 2-D weight: module name, stored shape, a loader, and whether it is ``d_in x d_out``."""

    module: str
    shape: tuple[int, int]
    load: Callable[[], torch.Tensor]
    transposed: bool = False
    row_blocks: Callable[[], Iterator[torch.Tensor]] | None = None  # stored rows, block by block


@dataclass(frozen=True)
class Part:
    module: str
    name: str
    layer: int
    kind: str
    shape: tuple[int, int]  # d_out x d_in
    read: Callable[[], torch.Tensor]
    # row blocks of a matrix with the same singular values (the stored one), and its shape
    blocks: Callable[[], Iterator[torch.Tensor]] | None = None
    blocks_shape: tuple[int, int] | None = None
    out_index: torch.Tensor | None = None  # which outputs of the stored layer this part produces (None: all)


def gpt2_conv1d(module: str, model_type: str | None, shape: tuple[int, int], qkv_conv1d: bool | None) -> bool:
    """Whether a stored weight is an HF GPT-2 ``Conv1D`` (known from the config, or from c_attn's shape)."""
    if not _GPT2_CONV1D.search(module):
        return False
    if model_type is not None:
        return model_type == "gpt2"
    return bool(qkv_conv1d)


def split(st: Stored, n_heads: int | None = None) -> list[Part]:
    """The cataloged matrices of one stored weight, each read as ``d_out x d_in``."""
    layer, kind = classify(st.module)
    load = st.load
    if st.transposed:
        out_shape = (st.shape[1], st.shape[0])
        base = lambda: load().T  # noqa: E731
    else:
        out_shape = st.shape
        base = load
    if _FUSED_QKV.search(st.module) and out_shape[0] == 3 * out_shape[1]:
        d = out_shape[1]
        layer = int(_FUSED_QKV.search(st.module).group("layer"))
        return [Part(st.module, f"{st.module}[{k}]", layer, k, (d, d), (lambda i=i: base()[i * d:(i + 1) * d]),
                     out_index=torch.arange(i * d, (i + 1) * d)) for i, k in enumerate(("q", "k", "v"))]
    m = _NEOX_QKV.search(st.module)
    if m and out_shape[0] % 3 == 0:
        d3, d = out_shape
        if not n_heads or (d3 // 3) % n_heads:
            log.warning("%s: number of heads unknown; cataloged whole as 'other'", st.module)
            return [Part(st.module, st.module, int(m.group("layer")), "other", out_shape, base)]
        hd = d3 // 3 // n_heads

        def neox(i: int) -> Callable[[], torch.Tensor]:
            return lambda: base().reshape(n_heads, 3, hd, d)[:, i].reshape(n_heads * hd, d)

        order = torch.arange(d3).reshape(n_heads, 3, hd)
        return [Part(st.module, f"{st.module}[{k}]", int(m.group("layer")), k, (d3 // 3, d), neox(i),
                     out_index=order[:, i].reshape(-1)) for i, k in enumerate(("q", "k", "v"))]
    return [Part(st.module, st.module, layer, kind, out_shape, base, st.row_blocks, st.shape if st.row_blocks else None)]

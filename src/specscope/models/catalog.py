"""Matrix catalog: every 2-D weight of a model named by ``(layer, kind)`` (SPEC 1.1)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

KINDS = ("q", "k", "v", "o", "mlp_in", "mlp_gate", "mlp_out", "embed", "lm_head", "other")
BLOCK_KINDS = KINDS[:7]


@dataclass(frozen=True)
class MatrixRef:
    """One cataloged matrix. ``read()`` returns it as ``d_out x d_in`` (detached, no copy if possible)."""

    name: str
    layer: int  # block index; -1 for matrices outside the blocks
    kind: str
    read: Callable[[], torch.Tensor]
    shape: tuple[int, int]


@dataclass(frozen=True)
class NameRule:
    pattern: re.Pattern
    kind: str


def _rules(spec: list[tuple[str, str]]) -> list[NameRule]:
    return [NameRule(re.compile(p), k) for p, k in spec]


# Block container names used by common families, then the block index.
_BLOCK = r"(?:^|\.)(?:blocks|h|layers|layer)\.(?P<layer>\d+)\."
# Module-name rules for the reference GPT and nanoGPT / LLaMA-style separate projections.
# Fused projections (GPT-2 c_attn, NeoX query_key_value) are split by family adapters.
NAME_RULES: list[NameRule] = _rules([
    (_BLOCK + r".*(?:attn|attention)\.(?:q|q_proj|query|c_q|wq)$", "q"),
    (_BLOCK + r".*(?:attn|attention)\.(?:k|k_proj|key|c_k|wk)$", "k"),
    (_BLOCK + r".*(?:attn|attention)\.(?:v|v_proj|value|c_v|wv)$", "v"),
    (_BLOCK + r".*(?:attn|attention)\.(?:o|o_proj|out_proj|c_proj|dense|wo)$", "o"),
    (_BLOCK + r".*(?:mlp|ffn|feed_forward)\.(?:fc|up_proj|c_fc|fc1|w1_up|up)$", "mlp_in"),
    (_BLOCK + r".*(?:mlp|ffn|feed_forward)\.(?:gate|gate_proj|w1)$", "mlp_gate"),
    (_BLOCK + r".*(?:mlp|ffn|feed_forward)\.(?:proj|down_proj|c_proj|fc2|down|w2)$", "mlp_out"),
    (r"(?:^|\.)(?:tok_emb|wte|embed_tokens|word_embeddings|embed_in)$", "embed"),
    (r"(?:^|\.)(?:lm_head|embed_out|output)$", "lm_head"),
])
_ANY_LAYER = re.compile(_BLOCK)


def classify(module_name: str) -> tuple[int, str]:
    """``(layer, kind)`` for a module name; unknown names are ``other``."""
    for rule in NAME_RULES:
        m = rule.pattern.search(module_name)
        if m:
            layer = m.groupdict().get("layer")
            return (int(layer) if layer is not None else -1), rule.kind
    m = _ANY_LAYER.search(module_name)
    return (int(m.group("layer")) if m else -1), "other"


def _reader(p: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: p.detach()


def catalog(model: nn.Module) -> list[MatrixRef]:
    """Every 2-D weight of ``model``, each once (tied weights are listed under their first name).

    Modules whose names match ``NAME_RULES`` get their kind and block index; any other
    2-D weight is cataloged as ``other``, so a model no rule knows still works.
    """
    refs: list[MatrixRef] = []
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            continue
        key = id(w)
        if key in seen:
            continue
        seen.add(key)
        layer, kind = classify(mod_name)
        refs.append(MatrixRef(mod_name, layer, kind, _reader(w), (int(w.shape[0]), int(w.shape[1]))))
    return refs

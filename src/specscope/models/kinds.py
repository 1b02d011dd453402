"""Matrix kinds and the naming rules that assign them (SPEC 1.1).

Rules read parameter names only (never module types), so a live model and its saved weights
get the same kinds. A name is the parameter's name without a trailing ``.weight``.
"""
from __future__ import annotations

import re

KINDS = ("q", "k", "v", "o", "mlp_in", "mlp_gate", "mlp_out", "router", "embed", "lm_head", "conv", "rnn_ih", "rnn_hh",
         "other")
BLOCK_KINDS = ("q", "k", "v", "o", "mlp_in", "mlp_gate", "mlp_out")
OUTSIDE_KINDS = ("embed", "lm_head")  # never inside a block: layer -1

# A block container and its index: blocks.3. / h.3. / layers.3. / layer.3. / block.3.
BLOCK = r"(?:^|\.)(?:blocks|block|h|layers|layer)\.(?P<layer>\d+)\."
_ATTN = BLOCK + r"(?:.*\.)?(?:attn|attention|self_attn|self_attention|cross_attn|crossattention)\.(?:.*\.)?"
_MLP = BLOCK + r"(?:.*\.)?(?:mlp|ffn|feed_forward|block_sparse_moe|moe|shared_experts?|experts\.\d+)\.(?:.*\.)?"
NAME_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), k) for p, k in [
    (BLOCK + r"(?:.*\.)?(?:router(?:\.classifier|\.layer|\.linear)?|shared_experts?_gate)$", "router"),
    (_ATTN + r"(?:q|q_proj|query|c_q|wq|to_q)$", "q"),
    (_ATTN + r"(?:k|k_proj|key|c_k|wk|to_k)$", "k"),
    (_ATTN + r"(?:v|v_proj|value|c_v|wv|to_v)$", "v"),
    (_ATTN + r"(?:o|o_proj|out_proj|c_proj|dense|wo|proj|to_out\.0)$", "o"),
    (_MLP + r"(?:gate|gate_proj|w1)$", "mlp_gate"),
    (_MLP + r"(?:fc|up_proj|c_fc|fc1|up|w3|dense_h_to_4h)$", "mlp_in"),
    (BLOCK + r"(?:intermediate\.dense|linear1)$", "mlp_in"),  # BERT / ViT; nn.TransformerEncoderLayer
    (_MLP + r"(?:proj|down_proj|c_proj|fc2|down|w2|dense_4h_to_h)$", "mlp_out"),
    (BLOCK + r"(?:output\.dense|linear2)$", "mlp_out"),
    (r"(?:^|\.)(?:tok_emb|wte|embed_tokens|word_embeddings|embed_in|tok_embeddings|token_embedding|embedding)$", "embed"),
    (r"(?:^|\.)(?:lm_head|embed_out)$", "lm_head"),
]]
_ANY_LAYER = re.compile(BLOCK)
_EXPERT = re.compile(r"(?:^|\.)experts\.(\d+)\.")
_GATE = re.compile(r"^(?P<parent>.*)\.gate$")


def block_layer(name: str) -> int | None:
    """The block index (an int) in a parameter name (``blocks.3.``, ``h.3.``, ``layers.3.``...), or None outside any
    block."""
    m = _ANY_LAYER.search(name)
    return int(m.group("layer")) if m else None


def expert_index(name: str) -> int:
    """The expert index of a per-expert module (``experts.3.w1``), else -1."""
    m = _EXPERT.search(name)
    return int(m.group(1)) if m else -1


def classify(name: str, moe_parents: frozenset[str] = frozenset()) -> tuple[int | None, str]:
    """``(block index or None, kind)`` for a matrix name, ``kind`` one of :data:`KINDS`; unknown names are
    ``other``.

    ``moe_parents``: modules that hold an ``experts`` child; their ``gate`` is the router, not
    a SwiGLU gate.
    """
    g = _GATE.match(name)
    if g and g.group("parent") in moe_parents:
        return block_layer(name), "router"
    for pattern, kind in NAME_RULES:
        m = pattern.search(name)
        if m:
            layer = m.groupdict().get("layer")
            return (int(layer) if layer is not None else None), kind
    return block_layer(name), "other"

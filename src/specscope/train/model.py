"""The reference GPT: a nanoGPT-style decoder in one readable file.

Each architecture switch is one visible line: learned or rotary positions, tied or untied
head, RMSNorm (or LayerNorm), GELU or ReLU^2 MLP, QK-norm, logit soft-cap. Module names follow the matrix catalog's
rules (``blocks.{i}.attn.q``, ``blocks.{i}.mlp.fc``, ...).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class GPTConfig:
    """The reference GPT's architecture: vocabulary size (tokens), context ``seq_len`` (tokens), ``n_layer`` blocks,
    ``n_head`` heads, width ``d_model``, MLP width ``mlp_ratio * d_model``, and the switches commented below. Checked
    on construction: a bad value is a :class:`ConfigError`."""

    vocab_size: int = 256
    seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    mlp_ratio: int = 4
    positions: str = "learned"  # "learned" | "rope"
    tied: bool = True  # lm_head shares the token embedding
    norm: str = "rms"  # "rms" | "layer"
    activation: str = "gelu"  # "gelu" | "relu2"
    bias: bool = False
    dropout: float = 0.0
    qk_norm: bool = False  # RMS-normalize each head's queries and keys before attention
    softcap: float = 0.0  # > 0: logits = softcap * tanh(logits / softcap)

    def __post_init__(self) -> None:
        """Every field checked here, so a bad configuration fails before a model is built (a ``ConfigError``)."""
        for name, low in (("vocab_size", 1), ("seq_len", 2), ("n_layer", 1), ("n_head", 1), ("d_model", 1), ("mlp_ratio", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.positions == "rope" and (self.d_model // self.n_head) % 2:
            raise ConfigError(f"rope needs an even head dimension, got d_model / n_head = {self.d_model // self.n_head}")
        if self.positions not in ("learned", "rope"):
            raise ConfigError("positions must be 'learned' or 'rope'")
        if self.norm not in ("rms", "layer"):
            raise ConfigError("norm must be 'rms' or 'layer'")
        if self.activation not in ("gelu", "relu2"):
            raise ConfigError("activation must be 'gelu' or 'relu2'")
        if not (math.isfinite(self.softcap) and self.softcap >= 0):
            raise ConfigError(f"softcap must be a finite number >= 0, got {self.softcap!r}")
        if not (math.isfinite(self.dropout) and 0 <= self.dropout < 1):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        """Every field by name, as a plain dict (JSON-ready; ``GPTConfig(**d)`` rebuilds it)."""
        return asdict(self)


class RMSNorm(nn.Module):
    """Root-mean-square normalization over the last dimension (``d`` features) with a learned gain; same shape out."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x / rms(x) * weight`` over the last dimension: a tensor shaped like ``x``."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(cfg: GPTConfig) -> nn.Module:
    """The normalization layer ``cfg.norm`` asks for over ``d_model`` features: :class:`RMSNorm` or ``nn.LayerNorm``."""
    return RMSNorm(cfg.d_model) if cfg.norm == "rms" else nn.LayerNorm(cfg.d_model, bias=cfg.bias)


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary-position tables: ``(cos, sin)`` of the angles ``position * base^(-2i / head_dim)``, each a float32
    tensor of shape ``(seq_len, head_dim // 2)`` (angles in radians)."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of features ``(x[2i], x[2i+1])`` of ``x`` (..., T, head_dim) by its position's angle from
    :func:`rope_tables`: a tensor shaped like ``x``, in its dtype."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    t = x.shape[-2]
    c, s = cos[:t].to(x.dtype), sin[:t].to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Causal multi-head self-attention with separate ``q``, ``k``, ``v``, ``o`` projections (``d_model x d_model``
    each), optional QK-norm and rotary positions."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.q = nn.Linear(d, d, bias=cfg.bias)
        self.k = nn.Linear(d, d, bias=cfg.bias)
        self.v = nn.Linear(d, d, bias=cfg.bias)
        self.o = nn.Linear(d, d, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.qk_norm = cfg.qk_norm
        self.rope = cfg.positions == "rope"
        if self.rope:
            cos, sin = rope_tables(cfg.seq_len, d // cfg.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over ``x`` (B, T, d_model), each position seeing itself and the earlier ones: (B, T, d_model)."""
        b, t, d = x.shape
        h = self.n_head
        q, k, v = (proj(x).view(b, t, h, d // h).transpose(1, 2) for proj in (self.q, self.k, self.v))
        if self.qk_norm:
            q, k = F.rms_norm(q, (d // h,)), F.rms_norm(k, (d // h,))
        if self.rope:
            q, k = apply_rope(q, self.rope_cos, self.rope_sin), apply_rope(k, self.rope_cos, self.rope_sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """The block's MLP: ``proj(act(fc(x)))``, ``fc`` widening to ``mlp_ratio * d_model``, GELU or squared ReLU."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.relu2 = cfg.activation == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP of ``x`` (..., d_model): a tensor of the same shape."""
        h = self.fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.proj(h)


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attn(ln1(x))``, then ``+ mlp(ln2(x))``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, the residual stream after it: (B, T, d_model)."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """The reference decoder-only GPT of a :class:`GPTConfig`: token (and learned position) embeddings, ``n_layer``
    :class:`Block` under ``blocks``, a final norm and ``lm_head`` (tied to the token embedding unless ``tied`` is
    False); GPT-2 initialization."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tied:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith(("attn.o.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def num_params(self) -> int:
        """Number of parameters (scalars), a tied weight counted once."""
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Residual-stream output of every block (SPEC 1.2), for probes: a list of ``n_layer`` tensors (B, T, d_model),
        shallowest first, for token ids ``idx`` (B, T)."""
        x = self._embed(idx)
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x)
        return outs

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        return self.drop(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        """``(logits, loss)`` for token ids ``idx`` (B, T): logits (B, T, vocab_size), soft-capped when ``softcap`` > 0;
        loss the cross-entropy against ``targets`` (B, T) in nats (``reduction`` as in ``F.cross_entropy``: a scalar
        mean by default, or one value per token, flattened to (B*T,), with ``"none"``), None without targets."""
        x = self._embed(idx)
        for blk in self.blocks:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        if self.cfg.softcap > 0:
            logits = self.cfg.softcap * torch.tanh(logits / self.cfg.softcap)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)
        return logits, loss

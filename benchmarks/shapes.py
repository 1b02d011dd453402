"""Models shaped like real ones, randomly initialized, for benchmarks."""
from __future__ import annotations

from torch import nn


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.attn = nn.Module()
        for name in ("q", "k", "v", "o"):
            setattr(self.attn, name, nn.Linear(d, d, bias=False))
        self.mlp = nn.Module()
        self.mlp.fc = nn.Linear(d, 4 * d, bias=False)
        self.mlp.proj = nn.Linear(4 * d, d, bias=False)


class GPT2SmallShapes(nn.Module):
    def __init__(self, n_layer: int = 12, d: int = 768):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_layer))

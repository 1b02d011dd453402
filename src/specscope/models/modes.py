"""Keeping a model's train/eval modes across a measurement."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def kept_modes(model: nn.Module, eval: bool = False) -> Iterator[None]:
    """Restore every module's ``training`` flag on exit; with ``eval=True`` switch to eval mode inside."""
    modes = [(m, m.training) for m in model.modules()]
    if eval:
        model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode

"""Keeping a model's train/eval modes and the RNG states across a measurement."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def kept_modes(model: nn.Module, eval: bool = False) -> Iterator[None]:
    """A context manager that restores every module's ``training`` flag on exit; with ``eval=True`` it switches the
    model to eval mode inside. Yields None."""
    modes = [(m, m.training) for m in model.modules()]
    if eval:
        model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """A context manager that restores the CPU and (initialized) CUDA RNG states on exit, so measuring draws no
    random numbers from the training's stream. Yields None."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
